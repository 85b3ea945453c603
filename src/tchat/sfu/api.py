"""WHIP (RFC 9725) and WHEP signalling routes over an SFU backend: the worker in this
process, or several instance processes (sfu/cluster_api.py).

POST an SDP offer with a Bearer token → 201, the SDP answer and a Location whose
DELETE ends the session. Errors are JSON: 400 bad SDP, 401 missing token, 403
wrong token, 404 unknown room/session, 409 room already published, 413 offer over
64 KiB, 429 too many sessions of this token or address still connecting, 503 full
(Retry-After on 429 and 503).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from tchat.admin import admin_only
from tchat.auth import Grant, TokenError, bearer, verify_token
from tchat.config import Settings
from tchat.http import BodyTooLarge, body_schema, json_error, read_body, read_model, too_large
from tchat.rooms import ROOM_RULE, valid_room
from tchat.sfu.sdp import MAX_SDP_BYTES, SdpError
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import Peer, Role, SessionError, SfuWorker

LAYERS = {"low": 0, "mid": 1, "high": 2}
CODES = {
    400: "bad_sdp",
    404: "not_found",
    409: "conflict",
    429: "too_many_sessions",
    503: "unavailable",
}


class LayerRequest(BaseModel):
    max_layer: int = Field(ge=0, le=2, description="Highest simulcast layer: 0 low … 2 high.")


def _grant(request: Request, room: str, role: Role) -> Grant | JSONResponse:
    """The token's grant, or the error response for a bad room name or token."""
    if not valid_room(room):
        return json_error(400, "bad_request", f"invalid room name: {ROOM_RULE}")
    token = bearer(request.headers.get("authorization"))
    try:
        return verify_token(request.app.state.secret, token, room, role)
    except TokenError as exc:
        status = 401 if token is None else 403
        return json_error(status, "unauthorized" if status == 401 else "forbidden", str(exc))


def _auth(request: Request, room: str, role: Role) -> JSONResponse | None:
    """The error response for a bad room name or token; None when the request may go on."""
    grant = _grant(request, room, role)
    return grant if isinstance(grant, JSONResponse) else None


def _source(request: Request) -> str:
    """The client address (a trusted proxy's X-Forwarded-For, see TCHAT_TRUSTED_PROXIES)."""
    return request.client.host if request.client else ""


async def _offer(request: Request) -> str | JSONResponse:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/sdp":
        return json_error(415, "unsupported_media_type", "send the offer as application/sdp")
    try:
        body = await read_body(request, MAX_SDP_BYTES)
    except BodyTooLarge as exc:
        return too_large(exc)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return json_error(400, "bad_sdp", "SDP offer is not UTF-8")


def _created(answer: str, location: str) -> Response:
    return Response(
        answer,
        status_code=201,
        media_type="application/sdp",
        headers={"Location": location, "Access-Control-Expose-Headers": "Location"},
    )


class SfuBackend(Protocol):
    """What the routes need from the SFU: the in-process worker (`LocalSfu`) or the
    instance processes of a cluster (`cluster_api.Cluster`). Failures raise
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
        peer, answer = self.worker.add_viewer(room, offer, max_layer, owner, source)
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

    async def stats(self, viewers: bool) -> dict[str, object]:
        return self.worker.stats(viewers=viewers)


def _failed(exc: SdpError | SessionError) -> JSONResponse:
    if isinstance(exc, SdpError):
        return json_error(400, "bad_sdp", str(exc))
    response = json_error(exc.status, CODES.get(exc.status, "unavailable"), str(exc))
    if exc.status in (429, 503):
        response.headers["Retry-After"] = "2"
    return response


def _local_component(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    sfu_settings = SfuSettings.from_settings(settings)

    @asynccontextmanager
    async def component(app: FastAPI) -> AsyncIterator[None]:
        worker = SfuWorker(sfu_settings)
        await worker.start()
        app.state.sfu = worker
        app.state.sfu_backend = LocalSfu(worker)
        try:
            yield
        finally:
            await worker.stop()

    return component


def mount(app: FastAPI, settings: Settings) -> None:
    if settings.num_sfu_instances > 1:  # several instance processes: sfu/cluster_api.py
        from tchat.sfu import cluster_api

        app.state.components.append(cluster_api.component(settings))
    else:
        app.state.components.append(_local_component(settings))

    def backend_of(request: Request) -> SfuBackend:
        backend: SfuBackend = request.app.state.sfu_backend
        return backend

    @app.post("/whip/{room}", tags=["sfu"], status_code=201)
    async def whip(room: str, request: Request) -> Response:
        """Publish: SDP offer in (Opus, H.264/VP8, ≤ 3 simulcast rids), answer out."""
        grant = _grant(request, room, "publisher")
        if isinstance(grant, Response):
            return grant
        offer = await _offer(request)
        if isinstance(offer, Response):
            return offer
        try:
            session, answer = await backend_of(request).publish(
                room, offer, grant.identity, _source(request)
            )
        except (SdpError, SessionError) as exc:
            return _failed(exc)
        return _created(answer, f"/whip/{room}/{session}")

    @app.post("/whep/{room}", tags=["sfu"], status_code=201)
    async def whep(room: str, request: Request, layer: str = "high") -> Response:
        """Watch: SDP offer in (recvonly), answer out; `?layer=low|mid|high` caps quality."""
        grant = _grant(request, room, "viewer")
        if isinstance(grant, Response):
            return grant
        if layer not in LAYERS:
            return json_error(400, "bad_request", "layer must be low, mid or high")
        offer = await _offer(request)
        if isinstance(offer, Response):
            return offer
        try:
            session, answer = await backend_of(request).view(
                room, offer, LAYERS[layer], grant.identity, _source(request)
            )
        except (SdpError, SessionError) as exc:
            return _failed(exc)
        return _created(answer, f"/whep/{room}/{session}")

    async def _delete(room: str, session: str, request: Request, role: Role) -> Response:
        if denied := _auth(request, room, role):
            return denied
        try:
            await backend_of(request).end(room, session, role)
        except SessionError as exc:
            return _failed(exc)
        return Response(status_code=200)

    @app.delete("/whip/{room}/{session}", tags=["sfu"])
    async def whip_delete(room: str, session: str, request: Request) -> Response:
        """End a publish session (its viewers end with it, on every instance)."""
        return await _delete(room, session, request, "publisher")

    @app.delete("/whep/{room}/{session}", tags=["sfu"])
    async def whep_delete(room: str, session: str, request: Request) -> Response:
        """End a viewer session."""
        return await _delete(room, session, request, "viewer")

    @app.put("/whep/{room}/{session}/layer", tags=["sfu"], openapi_extra=body_schema(LayerRequest))
    async def whep_layer(room: str, session: str, request: Request) -> Response:
        """Cap a viewer's simulcast layer (`{"max_layer": 0-2}`); the switch happens on the
        next keyframe."""
        if denied := _auth(request, room, "viewer"):
            return denied
        try:
            body = await read_model(request, LayerRequest, 1024)
            await backend_of(request).set_layer(room, session, body.max_layer)
        except BodyTooLarge as exc:
            return too_large(exc)
        except SessionError as exc:
            return _failed(exc)
        return JSONResponse({"max_layer": body.max_layer})

    @app.get("/sfu/stats", tags=["sfu"], response_model=None)
    async def sfu_stats(request: Request, viewers: bool = False) -> dict[str, object] | Response:
        """Counters of the SFU (with several instances: each instance's and their sums):
        peers, delivered packets, dropped datagrams by reason; `?viewers=true` adds each
        adaptive viewer's estimate, layer, tier and switches (one instance) — only to
        clients on the host itself (the admin listener), since it names sessions and
        addresses."""
        if viewers and (denied := admin_only(request, "per-viewer stats")):
            return denied
        return await backend_of(request).stats(viewers)
