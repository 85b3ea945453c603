"""What the WHIP/WHEP routes (sfu/api.py) call: `SfuBackend`, served by the worker of this
process (`LocalSfu`) or by the instance processes of a cluster (`cluster.backend.Cluster`)."""

from __future__ import annotations

from typing import Protocol

from tchat.sfu.sdpfrag import IceFragment
from tchat.sfu.worker import Peer, Role, SessionError, SfuWorker


class SfuBackend(Protocol):
    """What the routes need from the SFU: the in-process worker (`LocalSfu`) or the
    instance processes of a cluster (`cluster.backend.Cluster`). Failures raise
    `SessionError` (status and message; `SdpError` for a bad offer)."""

    async def publish(
        self, room: str, offer: str, owner: str = "", source: str = ""
    ) -> tuple[str, str]:
        """(session id, SDP answer). `owner` (token identity) and `source` (client
        address) count against the limits on sessions still connecting."""
        ...

    async def view(
        self, room: str, offer: str, max_layer: int, owner: str = "", source: str = ""
    ) -> tuple[str, str]: ...

    async def end(self, room: str, session: str, role: Role) -> None: ...

    async def set_layer(self, room: str, session: str, max_layer: int) -> None: ...

    async def patch_ice(
        self,
        room: str,
        session: str,
        role: Role,
        fragment: IceFragment,
        expect: tuple[str, ...] | None,
    ) -> str | None:
        """An ICE restart (our answer fragment) or trickled candidates (None);
        `expect`: the ufrags an If-Match names (412 if none is the session's)."""
        ...

    async def stats(self, viewers: bool) -> dict[str, object]: ...


class LocalSfu:
    """The SFU worker of this process as a backend."""

    def __init__(self, worker: SfuWorker) -> None:
        self.worker = worker

    async def publish(
        self, room: str, offer: str, owner: str = "", source: str = ""
    ) -> tuple[str, str]:
        peer, answer = self.worker.add_publisher(room, offer, owner, source)
        return peer.id, answer

    async def view(
        self, room: str, offer: str, max_layer: int, owner: str = "", source: str = ""
    ) -> tuple[str, str]:
        peer, answer = await self.worker.admit_viewer(room, offer, max_layer, owner, source)
        return peer.id, answer

    def _peer(self, room: str, session: str, role: Role) -> Peer:
        peer = self.worker.peers.get(session)
        if peer is None or peer.room.name != room or peer.role != role:
            raise SessionError(404, f"no {role} session {session!r} in room {room!r}")
        return peer

    async def end(self, room: str, session: str, role: Role) -> None:
        self.worker.close_peer(self._peer(room, session, role), "DELETE")

    async def set_layer(self, room: str, session: str, max_layer: int) -> None:
        self.worker.set_max_layer(self._peer(room, session, "viewer"), max_layer)

    async def patch_ice(
        self,
        room: str,
        session: str,
        role: Role,
        fragment: IceFragment,
        expect: tuple[str, ...] | None,
    ) -> str | None:
        return self.worker.patch_ice(self._peer(room, session, role), fragment, expect)

    async def stats(self, viewers: bool) -> dict[str, object]:
        return self.worker.stats(viewers=viewers)
