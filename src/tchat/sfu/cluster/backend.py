"""The SFU backend of the WHIP/WHEP routes (api.py) when the SFU runs as several
instance processes (N > 1).

Same statuses and bodies as the in-process worker; the session id in a Location is
`<instance id>.<peer id>` so any `tchat serve` sharing the routing store can find
the instance that holds it. A publisher lands on the least-loaded instance, which
becomes the room's origin; a viewer lands on the least-loaded instance (routing.pick)
and, if that is not the origin, the instance pulls the room over the relay first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from tchat.config import Settings
from tchat.services import Services
from tchat.sfu.cluster.control import ControlAuth, control_key
from tchat.sfu.cluster.routing import (
    InstanceRecord,
    Routing,
    RoutingUnavailable,
    make_routing,
    pick,
)
from tchat.sfu.cluster.supervisor import LocalInstance, Supervisor
from tchat.sfu.sdpfrag import IceFragment
from tchat.sfu.worker import Role, SessionError

log = logging.getLogger("tchat.sfu.cluster")

PENDING_S = 10.0  # forget placements after this even if no heartbeat came
CONTROL_TIMEOUT_S = 10.0  # an instance's control call (/view: plus its join wait)


class Cluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.routing: Routing = make_routing(settings.redis_url)
        self.key = control_key(settings.token_secret())
        self.supervisor = Supervisor(
            settings.num_sfu_instances,
            self.routing,
            self.key,
            host=settings.sfu_udp_host,
            base_udp_port=settings.sfu_udp_port,
            base_tcp_port=settings.sfu_tcp_port,
            max_load=settings.sfu_max_load,
            # resolved paths: a relative TCHAT_DATA_DIR means the server's, not the child's
            env={"TCHAT_DATA_DIR": str(settings.data_dir), "FFMPEG": settings.ffmpeg},
        )
        self.client = httpx.AsyncClient(timeout=CONTROL_TIMEOUT_S, auth=ControlAuth(self.key))
        self.join_wait = settings.sfu_join_wait
        self._placed: list[tuple[float, str]] = []

    async def start(self) -> None:
        await self.routing.start()
        await self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()
        await self.client.aclose()
        await self.routing.close()

    def pending(self, insts: list[InstanceRecord]) -> dict[str, int]:
        """Viewers this process placed after each instance's last heartbeat (which does
        not count them yet)."""
        now = time.time()
        self._placed = [p for p in self._placed if now - p[0] < PENDING_S]
        # placements after the sample of the counts (not after the heartbeat was stored:
        # on a busy host /stats can answer seconds later, and a viewer placed meanwhile
        # would be in neither the count nor pending)
        seen = {i.id: i.sampled or i.seen for i in insts}
        out: dict[str, int] = {}
        for t, iid in self._placed:
            if t > seen.get(iid, 0.0):
                out[iid] = out.get(iid, 0) + 1
        return out

    def placed(self, instance_id: str) -> None:
        self._placed.append((time.time(), instance_id))

    async def call(
        self,
        method: str,
        inst: InstanceRecord,
        path: str,
        body: dict[str, Any] | None = None,
        limit_s: float = CONTROL_TIMEOUT_S,  # the request's HTTP timeout
    ) -> tuple[int, dict[str, Any]]:
        try:
            resp = await self.client.request(
                method, inst.control + path, json=body, timeout=limit_s
            )
        except httpx.HTTPError as exc:
            return 503, {"detail": f"SFU instance {inst.id} unreachable: {exc}"}
        try:
            data = resp.json()
        except ValueError:
            data = {"detail": resp.text[:200]}
        return resp.status_code, data if isinstance(data, dict) else {"detail": str(data)}

    async def room_state(self, inst: InstanceRecord, room: str) -> dict[str, Any]:
        """{"publisher": live there, "waiting": its lost publisher's grace runs there}."""
        status, data = await self.call("GET", inst, f"/rooms/{quote(room, safe='')}")
        return data if status == 200 else {}

    async def _ok(
        self,
        method: str,
        inst: InstanceRecord,
        path: str,
        body: dict[str, Any] | None = None,
        limit_s: float = CONTROL_TIMEOUT_S,
    ) -> dict[str, Any]:
        """`call`, with an instance's refusal raised as SessionError (its status)."""
        status, data = await self.call(method, inst, path, body, limit_s)
        if status != 200:
            retry = data.get("retry_after")
            raise SessionError(
                status, str(data.get("detail", "")), retry if isinstance(retry, int) else None
            )
        return data

    # --- the routes' backend (backend.SfuBackend) ------------------------------------------
    async def publish(
        self, room: str, offer: str, owner: str = "", source: str = ""
    ) -> tuple[str, str]:
        try:
            insts = await self.routing.instances()
            by_id = {i.id: i for i in insts}
            current = await self.routing.route(room)
            state = await self.room_state(by_id[current], room) if current in by_id else {}
            if state.get("publisher"):
                raise SessionError(409, f"room {room!r} already has a publisher")
            # a lost publisher's room waits on its instance (viewers, relays): resume there
            target = by_id.get(current or "") if state.get("waiting") else None
            if target is None:
                target = pick(insts, self.pending(insts), None)
                if target is None:
                    raise SessionError(503, "no SFU instance is up")
                if not await self.routing.set_route(room, target.id, current):
                    raise SessionError(409, f"room {room!r} is going live elsewhere")
        except RoutingUnavailable as exc:
            raise _unavailable(exc) from None
        body = {"room": room, "offer": offer, "owner": owner, "source": source}
        data = await self._ok("POST", target, "/publish", body)
        return f"{target.id}.{data['peer']}", str(data["answer"])

    async def view(
        self, room: str, offer: str, max_layer: int, owner: str = "", source: str = ""
    ) -> tuple[str, str]:
        try:
            insts = await self.routing.instances()
            origin_id = await self.routing.route(room)
        except RoutingUnavailable as exc:
            raise _unavailable(exc) from None
        origin = next((i for i in insts if i.id == origin_id), None)
        if origin is None:
            raise SessionError(404, f"room {room!r} has no publisher")
        body: dict[str, Any] = {
            "room": room,
            "offer": offer,
            "max_layer": max_layer,
            "owner": owner,
            "source": source,
        }
        relay = {
            "id": origin.id,
            "control": origin.control,
            "relay_host": origin.host,
            "relay_port": origin.relay_port,
        }
        # an instance that is full or overloaded (503) passes the viewer on to the next
        # one; only when every instance refuses does the client get the 503
        left = list(insts)
        while True:
            target = pick(left, self.pending(insts), origin.id)
            assert target is not None  # the origin is among them until it refused
            self.placed(target.id)
            request = body if target.id == origin.id else {**body, "origin": relay}
            # a full instance holds the viewer in its join queue (sfu/admission.py): each
            # gets a share of SFU_JOIN_WAIT, so passing it on costs no more in all
            wait = self.join_wait / len(insts)
            try:
                data = await self._ok(
                    "POST", target, "/view", {**request, "max_wait": wait}, CONTROL_TIMEOUT_S + wait
                )
            except SessionError as exc:
                left.remove(target)
                if exc.status != 503 or not left:
                    raise
                log.info("sfu cluster: %s refused a viewer of %s (%s)", target.id, room, exc)
                continue
            return f"{target.id}.{data['peer']}", str(data["answer"])

    async def _session(
        self, room: str, session: str, role: str, method: str, suffix: str = "", body: Any = None
    ) -> tuple[InstanceRecord, dict[str, Any]]:
        """Send a session's request to the instance named in its id (the instance and its
        answer); 404 if none has it."""
        iid, _, peer = session.partition(".")
        try:
            insts = {i.id: i for i in await self.routing.instances()}
        except RoutingUnavailable as exc:
            raise _unavailable(exc) from None
        if not peer or iid not in insts:
            raise SessionError(404, f"no session {session!r} in room {room!r}")
        path = f"/rooms/{quote(room, safe='')}/{role}/{peer}{suffix}"
        try:
            data = await self._ok(method, insts[iid], path, body)
        except SessionError as exc:
            if exc.status == 404:
                raise SessionError(404, f"no {role} session {session!r} in room {room!r}") from None
            raise
        return insts[iid], data

    async def end(self, room: str, session: str, role: Role) -> None:
        inst, _ = await self._session(room, session, role, "DELETE")
        if role == "publisher":
            try:
                await self.routing.clear_route(room, inst.id)
            except RoutingUnavailable:
                pass  # a stale route is checked (and replaced) by the next WHIP

    async def set_layer(self, room: str, session: str, max_layer: int) -> None:
        await self._session(room, session, "viewer", "PUT", "/layer", {"max_layer": max_layer})

    async def patch_ice(
        self,
        room: str,
        session: str,
        role: Role,
        fragment: IceFragment,
        expect: tuple[str, ...] | None,
    ) -> str | None:
        # candidates stay here: a lite agent does not use them (any number is accepted)
        body = {"ufrag": fragment.ufrag, "pwd": fragment.pwd, "expect": expect,
                "end_of_candidates": fragment.end_of_candidates}  # fmt: skip
        _, data = await self._session(room, session, role, "PATCH", "/ice", body)
        answer = data.get("answer")
        return str(answer) if answer is not None else None

    async def stats(self, viewers: bool) -> dict[str, object]:
        """This server's instances (per-instance figures) and their sums; per-viewer
        stats are the single worker's (`viewers` is not served here)."""
        per = await self.supervisor.stats()

        def total(key: str) -> int:
            return sum(int(s.get(key, 0)) for s in per)  # type: ignore[call-overload]

        return {
            "instances": per,
            "restarts": self.supervisor.restarts,
            "peers": total("peers"),
            "viewers_connected": total("viewers_connected"),
            "delivered_packets": total("delivered_packets"),
            "relay_packets_out": total("relay_packets_out"),
            "ice_restarts": total("ice_restarts"),
        }


def _unavailable(exc: RoutingUnavailable) -> SessionError:
    return SessionError(503, f"SFU routing store unavailable ({exc}); try again")


class Recordings(Protocol):
    """What the cluster needs of the recording service (the app's, if recording)."""

    def fail_unowned(self, room: str | None, detail: str) -> int: ...


def _fail_recordings(recording: Recordings, inst: LocalInstance) -> None:
    """An instance died: the recordings of the rooms it originated end as failed (their
    FFmpeg went with it), so they do not stay "recording" for ever."""
    rooms = inst.stats.get("origin_rooms") or []
    for room in rooms if isinstance(rooms, list) else []:
        n = recording.fail_unowned(room, "the SFU instance of this stream died; segments kept")
        if n:
            log.warning(
                "sfu instance %s died: %d recording(s) of %s failed", inst.record.id, n, room
            )


@asynccontextmanager
async def running(services: Services) -> AsyncIterator[None]:
    """The cluster: supervised instances and routing, as the routes' backend."""
    cluster = Cluster(services.settings)
    if services.recording is not None:
        cluster.supervisor.on_lost = partial(_fail_recordings, services.recording)
    await cluster.start()
    services.sfu_cluster = services.sfu_backend = cluster
    try:
        yield
    finally:
        await cluster.stop()
        services.sfu_cluster = services.sfu_backend = None
