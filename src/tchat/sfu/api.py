"""WHIP (RFC 9725) and WHEP signalling routes over an SFU backend: the worker in this
process, or several instance processes (sfu/cluster/backend.py).

POST an SDP offer with a Bearer token → 201, the SDP answer, a Location whose DELETE
ends the session, an ETag naming the ICE session and, when ICE_SERVERS is set, one
`Link: <uri>; rel="ice-server"` per STUN/TURN server. Errors are JSON: 400 bad SDP or
room name, 401 no valid token, 403 a valid token that does not grant this, 404 unknown
room/session, 409 room already published, 413 offer over 64 KiB, 415 not
application/sdp, 429 too many sessions of this token or address still connecting, 503
full (Retry-After on 429 and 503).

PATCH the session URL with an `application/trickle-ice-sdpfrag` body (RFC 9725 §4.3):
new ice-ufrag/ice-pwd restart ICE (200, our new credentials in a fragment, a new ETag;
DTLS and SRTP go on); a fragment of the same ufrag trickles candidates (204: accepted,
and not needed by our ICE-lite agent, which learns addresses from the peer's checks).
An If-Match other than `*` must name the current ICE session (else 412).

A session is ended (DELETE), capped (PUT …/layer) or patched only with the token that
created it: the session URL carries an HMAC of the session and that token
(sfu/access.py). Another valid token of the room gets 403.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from tchat.admin import admin_only
from tchat.config import Settings
from tchat.http import (
    BodyTooLarge,
    api_router,
    body_schema,
    error_responses,
    include,
    json_error,
    read_body,
    read_model,
    too_large,
)
from tchat.services import Services, require, services
from tchat.sfu.access import authorize, session_of, session_tag, source
from tchat.sfu.api_docs import BEARER, PATCH_DOC, SESSION_DOC, sdp_exchange
from tchat.sfu.backend import LocalSfu, SfuBackend
from tchat.sfu.sdp import MAX_SDP_BYTES, SdpError
from tchat.sfu.sdpfrag import MAX_FRAGMENT_BYTES, MEDIA_TYPE, parse_fragment
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import Role, SessionError, SfuWorker

LAYERS = {"low": 0, "mid": 1, "high": 2}
CODES = {
    400: "bad_sdp",
    404: "not_found",
    409: "conflict",
    412: "precondition_failed",
    429: "too_many_sessions",
    503: "unavailable",
}
_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)


class LayerRequest(BaseModel):
    max_layer: int = Field(ge=0, le=2, description="Highest simulcast layer: 0 low … 2 high.")


class LayerAnswer(BaseModel):
    max_layer: int


async def _text(request: Request, media_type: str, limit: int) -> str | JSONResponse:
    """The body of an SDP offer or ICE fragment: 415 for another type, 413 past `limit`."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != media_type:
        return json_error(415, "unsupported_media_type", f"send the body as {media_type}")
    try:
        body = await read_body(request, limit)
    except BodyTooLarge as exc:
        return too_large(exc)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return json_error(400, "bad_sdp", f"the {media_type} body is not UTF-8")


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


def etag_of(sdp_text: str, location: str) -> str:
    """A strong ETag naming the ICE session: our ufrag in an answer or restart fragment
    (the client has it already) and a digest of the session URL, so If-Match can be
    checked against the session's current ufrag (RFC 9725 §4.3)."""
    match = _UFRAG.search(sdp_text)
    return f'"{match.group(1) if match else ""}-{_url_digest(location)}"'


def _url_digest(location: str) -> str:
    return hashlib.sha256(location.encode()).hexdigest()[:16]


def _if_match(request: Request) -> tuple[str, ...] | JSONResponse | None:
    """The ufrags of the ICE sessions an If-Match names (RFC 9110: one tag or a list);
    None for `*` or no If-Match (it is optional here); 412 when no entry can be one of
    this session's ETags (another session's, a weak tag)."""
    value = request.headers.get("if-match", "").strip()
    entries = [e.strip() for e in value.split(",") if e.strip()]
    if not entries or "*" in entries:
        return None
    ufrags = []
    for entry in entries:
        ufrag, _, digest = entry.strip('"').rpartition("-")
        if entry == f'"{ufrag}-{digest}"' and digest == _url_digest(request.url.path):
            ufrags.append(ufrag)
    if not ufrags:
        return json_error(412, "precondition_failed", "If-Match must be * or our ETag")
    return tuple(ufrags)


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


def _failed(exc: SdpError | SessionError) -> JSONResponse:
    if isinstance(exc, SdpError):
        return json_error(400, "bad_sdp", str(exc))
    response = json_error(exc.status, CODES.get(exc.status, "unavailable"), str(exc))
    if exc.status in (429, 503):
        response.headers["Retry-After"] = str(exc.retry_after or 2)
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
    "/whip/{room}", **sdp_exchange("Published: the SDP answer.", 400, 401, 403, 409, 415, 503)
)
async def whip(room: str, request: Request) -> Response:
    """Publish: SDP offer in (Opus, H.264/VP8, ≤ 3 simulcast rids), answer out."""
    auth = authorize(request, room, "publisher")
    if isinstance(auth, Response):
        return auth
    grant, token = auth
    offer = await _text(request, "application/sdp", MAX_SDP_BYTES)
    if isinstance(offer, Response):
        return offer
    try:
        session, answer = await _backend(request).publish(
            room, offer, grant.identity, source(request)
        )
    except (SdpError, SessionError) as exc:
        return _failed(exc)
    return _answer(request, "whip", room, "publisher", session, token, answer)


@router.post(
    "/whep/{room}", **sdp_exchange("Watching: the SDP answer.", 400, 401, 403, 404, 415, 503)
)
async def whep(room: str, request: Request, layer: str = "high") -> Response:
    """Watch: SDP offer in (recvonly), answer out; `?layer=low|mid|high` caps quality."""
    auth = authorize(request, room, "viewer")
    if isinstance(auth, Response):
        return auth
    grant, token = auth
    if layer not in LAYERS:
        return json_error(400, "bad_request", "layer must be low, mid or high")
    offer = await _text(request, "application/sdp", MAX_SDP_BYTES)
    if isinstance(offer, Response):
        return offer
    try:
        session, answer = await _backend(request).view(
            room, offer, LAYERS[layer], grant.identity, source(request)
        )
    except (SdpError, SessionError) as exc:
        return _failed(exc)
    return _answer(request, "whep", room, "viewer", session, token, answer)


async def _delete(room: str, resource: str, request: Request, role: Role) -> Response:
    session = session_of(request, room, role, resource)
    if isinstance(session, Response):
        return session
    try:
        await _backend(request).end(room, session, role)
    except SessionError as exc:
        return _failed(exc)
    return Response(status_code=200)


@router.delete("/whip/{room}/{session}", **SESSION_DOC)
async def whip_delete(room: str, session: str, request: Request) -> Response:
    """End a publish session (its viewers end with it, on every instance); only
    with the token that published."""
    return await _delete(room, session, request, "publisher")


@router.delete("/whep/{room}/{session}", **SESSION_DOC)
async def whep_delete(room: str, session: str, request: Request) -> Response:
    """End a viewer session; only with the token that started it."""
    return await _delete(room, session, request, "viewer")


async def _patch(room: str, resource: str, request: Request, role: Role) -> Response:
    session = session_of(request, room, role, resource)
    if isinstance(session, Response):
        return session
    body, expect = await _text(request, MEDIA_TYPE, MAX_FRAGMENT_BYTES), _if_match(request)
    if isinstance(body, Response) or isinstance(expect, Response):
        return body if isinstance(body, Response) else expect  # type: ignore[return-value]
    try:
        answer = await _backend(request).patch_ice(
            room, session, role, parse_fragment(body), expect
        )
    except (SdpError, SessionError) as exc:
        return _failed(exc)
    if answer is None:
        return Response(status_code=204)  # trickled candidates: accepted
    etag = etag_of(answer, request.url.path)
    resp = Response(answer, media_type=MEDIA_TYPE, headers={"ETag": etag})
    for link in ice_server_links(services(request).settings):
        resp.headers.append("Link", link)
    return resp


@router.patch("/whip/{room}/{session}", **PATCH_DOC)
async def whip_patch(room: str, session: str, request: Request) -> Response:
    """ICE restart or trickle ICE of a publish session (RFC 9725 §4.3)."""
    return await _patch(room, session, request, "publisher")


@router.patch("/whep/{room}/{session}", **PATCH_DOC)
async def whep_patch(room: str, session: str, request: Request) -> Response:
    """ICE restart or trickle ICE of a viewer session."""
    return await _patch(room, session, request, "viewer")


@router.put(
    "/whep/{room}/{session}/layer",
    response_model=LayerAnswer,
    openapi_extra={**body_schema(LayerRequest), "security": BEARER},
    responses=error_responses(400, 401, 403, 404, 413, 415),
)
async def whep_layer(room: str, session: str, request: Request) -> Any:
    """Cap a viewer's simulcast layer (`{"max_layer": 0-2}`); the switch happens on the
    next keyframe. Only with the token that started the session."""
    peer = session_of(request, room, "viewer", session)
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
