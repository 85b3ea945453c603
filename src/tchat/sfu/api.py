"""WHIP (RFC 9725) and WHEP signalling routes over an SFU backend: the worker in this
process, or several instance processes (sfu/cluster/backend.py).

POST an SDP offer with a Bearer token → 201, the SDP answer, a Location whose DELETE
ends the session, an ETag naming the ICE session and, when ICE_SERVERS is set, one
`Link: <uri>; rel="ice-server"` per STUN/TURN server. Errors are JSON: 400 bad SDP or
room name, 401 no valid token, 403 a valid token that does not grant this, 404 unknown
room/session, 409 room already published, 413 offer over 64 KiB, 415 not
application/sdp, 429 too many sessions of this token or address still connecting, 503
full (Retry-After on 429 and 503).

A session is ended (DELETE) or capped (PUT …/layer) only with the token that created
it: the session URL carries an HMAC of the session and that token, so any process
sharing the secret checks it, for the in-process worker and a cluster alike, with no
state. Another valid token of the room gets 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from tchat.admin import admin_only
from tchat.auth import Grant, TokenError, TokenForbidden, bearer, verify_token
from tchat.config import Settings
from tchat.http import (
    BodyTooLarge,
    api_router,
    auth_failed,
    body_schema,
    error_responses,
    include,
    json_error,
    read_body,
    read_model,
    too_large,
)
from tchat.rooms import ROOM_RULE, valid_room
from tchat.services import Services, require, services
from tchat.sfu.backend import LocalSfu, SfuBackend
from tchat.sfu.sdp import MAX_SDP_BYTES, SdpError
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import Role, SessionError, SfuWorker

LAYERS = {"low": 0, "mid": 1, "high": 2}
CODES = {
    400: "bad_sdp",
    404: "not_found",
    409: "conflict",
    429: "too_many_sessions",
    503: "unavailable",
}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)


class LayerRequest(BaseModel):
    max_layer: int = Field(ge=0, le=2, description="Highest simulcast layer: 0 low … 2 high.")


class LayerAnswer(BaseModel):
    max_layer: int


def _grant(request: Request, room: str, role: Role) -> tuple[Grant, str] | JSONResponse:
    """The token's grant and the token itself (session URLs are bound to it), or the
    error response for a bad room name or token."""
    if not valid_room(room):
        return json_error(400, "bad_request", f"invalid room name: {ROOM_RULE}")
    token = bearer(request.headers.get("authorization"))
    try:
        grant = verify_token(services(request).secret, token, room, role)
    except TokenError as exc:
        return auth_failed(exc)
    assert token is not None  # verify_token refuses a missing one
    return grant, token


def _source(request: Request) -> str:
    """The client address (a trusted proxy's X-Forwarded-For, see TCHAT_TRUSTED_PROXIES)."""
    return request.client.host if request.client else ""


def session_tag(secret: str, room: str, role: Role, session: str, token: str) -> str:
    """What binds a session URL to the token that created it (16 url-safe chars)."""
    msg = "\0".join(("tchat-sfu-session", role, room, session, token)).encode()
    digest = hmac.new(secret.encode(), msg, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode()


def _owned(
    request: Request, room: str, role: Role, resource: str, token: str
) -> str | JSONResponse:
    """The backend's session id of a session URL segment (`<session>.<tag>`) if `token`
    created it; 404 for a segment that is no session URL, 403 for another token's."""
    session, dot, tag = resource.rpartition(".")
    if not dot or not session:
        return json_error(404, "not_found", f"no {role} session {resource!r} in room {room!r}")
    want = session_tag(services(request).secret, room, role, session, token)
    if not hmac.compare_digest(tag, want):
        return auth_failed(
            TokenForbidden(f"{role} session {resource!r} was started with another token")
        )
    return session


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


def ice_server_links(settings: Settings) -> list[str]:
    """`Link` header values for the configured STUN/TURN servers (RFC 9725 §4.6)."""
    links = []
    for uri in settings.split_list(settings.ice_servers):
        link = f'<{uri}>; rel="ice-server"'
        if uri.lower().startswith("turn") and (settings.ice_username or settings.ice_credential):
            user = settings.ice_username.replace('"', "")
            cred = settings.ice_credential.replace('"', "")
            link += f'; username="{user}"; credential="{cred}"; credential-type="password"'
        links.append(link)
    return links


def etag_of(answer: str, location: str) -> str:
    """A strong ETag naming this ICE session (our ufrag in the answer): what an ICE
    restart's If-Match would have to name (RFC 9725 §4.4)."""
    match = _UFRAG.search(answer)
    basis = f"{location}\0{match.group(1) if match else answer}".encode()
    return '"' + hashlib.sha256(basis).hexdigest()[:32] + '"'


def _created(answer: str, location: str, links: list[str]) -> Response:
    resp = Response(
        answer,
        status_code=201,
        media_type="application/sdp",
        headers={"Location": location, "ETag": etag_of(answer, location)},
    )
    for link in links:
        resp.headers.append("Link", link)
    return resp


def _sdp_exchange(created: str, *errors: int) -> dict[str, Any]:
    """OpenAPI of a WHIP/WHEP POST: an application/sdp body in, 201 with the answer."""
    text = {"schema": {"type": "string"}}
    return {
        "response_class": Response,
        "status_code": 201,
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "description": "The SDP offer (the whole offer, ICE candidates included).",
                "content": {"application/sdp": text},
            },
            "security": BEARER,
        },
        "responses": {
            201: {
                "description": created,
                "content": {"application/sdp": text},
                "headers": {
                    "Location": {
                        "description": "The session URL: DELETE ends the session.",
                        "schema": {"type": "string"},
                    },
                    "ETag": {
                        "description": "Names the ICE session.",
                        "schema": {"type": "string"},
                    },
                    "Link": {
                        "description": "One per STUN/TURN server (when ICE_SERVERS is set): "
                        '`<stun:…>; rel="ice-server"`.',
                        "schema": {"type": "string"},
                    },
                },
            },
            **error_responses(*errors),
        },
    }


def _failed(exc: SdpError | SessionError) -> JSONResponse:
    if isinstance(exc, SdpError):
        return json_error(400, "bad_sdp", str(exc))
    response = json_error(exc.status, CODES.get(exc.status, "unavailable"), str(exc))
    if exc.status in (429, 503):
        response.headers["Retry-After"] = "2"
    return response


@asynccontextmanager
async def running(services: Services) -> AsyncIterator[None]:
    """The in-process worker, or with NUM_SFU_INSTANCES > 1 the supervised instance
    processes (sfu/cluster/backend.py); either is the routes' backend."""
    settings = services.settings
    if settings.num_sfu_instances > 1:
        from tchat.sfu.cluster import backend

        async with backend.running(services):
            yield
        return
    worker = SfuWorker(SfuSettings.from_settings(settings))
    await worker.start()
    services.sfu, services.sfu_backend = worker, LocalSfu(worker)
    try:
        yield
    finally:
        await worker.stop()
        services.sfu = services.sfu_backend = None


router = api_router("sfu")


def _backend(request: Request) -> SfuBackend:
    return require(services(request).sfu_backend, "the SFU")


def _answer(
    request: Request, kind: str, room: str, role: Role, session: str, token: str, answer: str
) -> Response:
    """201 with the answer, a Location bound to the token, the ETag and ICE server Links."""
    svc = services(request)
    location = f"/{kind}/{room}/{session}.{session_tag(svc.secret, room, role, session, token)}"
    return _created(answer, location, ice_server_links(svc.settings))


@router.post(
    "/whip/{room}", **_sdp_exchange("Published: the SDP answer.", 400, 401, 403, 409, 415, 503)
)
async def whip(room: str, request: Request) -> Response:
    """Publish: SDP offer in (Opus, H.264/VP8, ≤ 3 simulcast rids), answer out."""
    auth = _grant(request, room, "publisher")
    if isinstance(auth, Response):
        return auth
    grant, token = auth
    offer = await _offer(request)
    if isinstance(offer, Response):
        return offer
    try:
        session, answer = await _backend(request).publish(
            room, offer, grant.identity, _source(request)
        )
    except (SdpError, SessionError) as exc:
        return _failed(exc)
    return _answer(request, "whip", room, "publisher", session, token, answer)


@router.post(
    "/whep/{room}", **_sdp_exchange("Watching: the SDP answer.", 400, 401, 403, 404, 415, 503)
)
async def whep(room: str, request: Request, layer: str = "high") -> Response:
    """Watch: SDP offer in (recvonly), answer out; `?layer=low|mid|high` caps quality."""
    auth = _grant(request, room, "viewer")
    if isinstance(auth, Response):
        return auth
    grant, token = auth
    if layer not in LAYERS:
        return json_error(400, "bad_request", "layer must be low, mid or high")
    offer = await _offer(request)
    if isinstance(offer, Response):
        return offer
    try:
        session, answer = await _backend(request).view(
            room, offer, LAYERS[layer], grant.identity, _source(request)
        )
    except (SdpError, SessionError) as exc:
        return _failed(exc)
    return _answer(request, "whep", room, "viewer", session, token, answer)


async def _delete(room: str, resource: str, request: Request, role: Role) -> Response:
    auth = _grant(request, room, role)
    if isinstance(auth, Response):
        return auth
    session = _owned(request, room, role, resource, auth[1])
    if isinstance(session, Response):
        return session
    try:
        await _backend(request).end(room, session, role)
    except SessionError as exc:
        return _failed(exc)
    return Response(status_code=200)


_SESSION_DOC: dict[str, Any] = {
    "response_class": Response,
    "openapi_extra": {"security": BEARER},
    "responses": {200: {"description": "Ended."}, **error_responses(401, 403, 404, 503)},
}


@router.delete("/whip/{room}/{session}", **_SESSION_DOC)
async def whip_delete(room: str, session: str, request: Request) -> Response:
    """End a publish session (its viewers end with it, on every instance); only
    with the token that published."""
    return await _delete(room, session, request, "publisher")


@router.delete("/whep/{room}/{session}", **_SESSION_DOC)
async def whep_delete(room: str, session: str, request: Request) -> Response:
    """End a viewer session; only with the token that started it."""
    return await _delete(room, session, request, "viewer")


@router.put(
    "/whep/{room}/{session}/layer",
    response_model=LayerAnswer,
    openapi_extra={**body_schema(LayerRequest), "security": BEARER},
    responses=error_responses(400, 401, 403, 404, 413, 415),
)
async def whep_layer(room: str, session: str, request: Request) -> Any:
    """Cap a viewer's simulcast layer (`{"max_layer": 0-2}`); the switch happens on the
    next keyframe. Only with the token that started the session."""
    auth = _grant(request, room, "viewer")
    if isinstance(auth, Response):
        return auth
    peer = _owned(request, room, "viewer", session, auth[1])
    if isinstance(peer, Response):
        return peer
    try:
        body = await read_model(request, LayerRequest, 1024)
        await _backend(request).set_layer(room, peer, body.max_layer)
    except BodyTooLarge as exc:
        return too_large(exc)
    except SessionError as exc:
        return _failed(exc)
    return JSONResponse({"max_layer": body.max_layer})


@router.get("/sfu/stats", response_model=None, responses=error_responses(403))
async def sfu_stats(request: Request, viewers: bool = False) -> dict[str, object] | Response:
    """Counters of the SFU (with several instances: each instance's and their sums):
    peers, delivered packets, dropped datagrams by reason; `?viewers=true` adds each
    adaptive viewer's estimate, layer, tier and switches (one instance) — only to
    clients on the host itself (the admin listener), since it names sessions and
    addresses."""
    if viewers and (denied := admin_only(request, "per-viewer stats")):
        return denied
    return await _backend(request).stats(viewers)


def mount(app: FastAPI, settings: Settings) -> None:
    include(app, router)
