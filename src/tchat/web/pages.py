"""The web pages: home, studio (go live), watch (WHEP + chat), recording replay.

Plain HTML/CSS/JS modules under `static/`, no build step. hls.js comes from npm
(`scripts/web-deps.sh` puts a pinned `dist/hls.min.js` and its licence under
`static/vendor/`); nothing is loaded from a CDN.

Routes: `/`, `/studio`, `/watch/{room}`, `/recordings/{id}` (a browser asking for
HTML gets the page, API clients keep the JSON), `/static/...`, `GET /live` (rooms
live now with viewer counts) and, only when `Settings.dev_tokens_enabled` (loopback
and no public URL, or WEB_DEV_TOKENS=on), `POST /dev/token` for viewer/chat tokens.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, cast
from weakref import WeakKeyDictionary

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from tchat.admin import LOCAL_NAMES, admin_only, admin_url
from tchat.auth import Grant, issue_token
from tchat.chat.protocol import RateLimiter
from tchat.config import Settings
from tchat.http import BodyTooLarge, body_schema, json_error, read_model, too_large
from tchat.rooms import ROOM_PATTERN
from tchat.services import Services, require, services

STATIC = Path(__file__).parent / "static"
DEV_TOKENS_PER_S = 0.5  # per source address, after a burst of
DEV_TOKEN_BURST = 20
_RECORDING_PAGE = re.compile(r"^/recordings/[A-Za-z0-9_-]{1,64}/?$")


class TokenRequest(BaseModel):
    room: str = Field(pattern=ROOM_PATTERN)
    role: Literal["viewer", "chat"] = "chat"


def _page(name: str) -> FileResponse:
    # pages are tiny and change with the code: always revalidate
    return FileResponse(
        STATIC / name, media_type="text/html", headers={"Cache-Control": "no-cache"}
    )


def live_rooms(svc: Services) -> list[dict[str, Any]]:
    """Rooms whose publisher is connected, with their viewer count (WHEP sessions on this
    server), live recording and, from presence, `watching` (WHEP + HLS pages, every
    instance) and `chatting` (chat sockets, every instance)."""
    out = []
    for room in _sfu_rooms(svc):
        room["recording_id"] = _live_recording_id(svc, room["room"])
        if svc.chat is not None:
            room.update(svc.chat.presence.of(room["room"]))
        out.append(room)
    return sorted(out, key=lambda r: (-r["viewers"], r["room"]))


def _sfu_rooms(svc: Services) -> list[dict[str, Any]]:
    """Live rooms of this server's SFU (worker or cluster) with their WHEP viewers."""
    cluster = svc.sfu_cluster
    per_worker: list[dict[str, dict[str, Any]]]
    if cluster is not None:  # the instances' last heartbeats (≤ 1 s old); this server's only
        # each heartbeat carries its worker's live_rooms() as JSON
        per_worker = [
            cast("dict[str, dict[str, Any]]", inst.stats.get("live_rooms") or {})
            for inst in cluster.supervisor.instances.values()
        ]
    else:
        per_worker = [require(svc.sfu, "the SFU").live_rooms()]
    merged: dict[str, dict[str, Any]] = {}
    for rooms in per_worker:
        for name, r in rooms.items():
            agg = merged.setdefault(name, {"room": name, "viewers": 0, "live_for_s": None})
            agg["viewers"] += r["viewers"]
            if r.get("reconnecting"):
                agg["reconnecting"] = True
            if r["live_for_s"] is not None:
                agg["live_for_s"] = r["live_for_s"]
    # edge viewers of a room whose origin is gone are not a live room; one whose publisher
    # was lost and may come back (the SFU's grace period) still is, `reconnecting`
    return [r for r in merged.values() if r["live_for_s"] is not None or r.get("reconnecting")]


def _live_recording_id(svc: Services, room: str) -> str | None:
    if svc.live_recording is not None:
        return svc.live_recording.recording_of(room)
    if svc.recording is None:  # cluster: the nodes record
        return None
    recs = svc.recording.catalog.list(room=room, state="recording", limit=1)
    return recs[0].id if recs else None


class RecordingPageMiddleware:
    """`GET /recordings/{id}` from a browser navigation (Accept: text/html) gets the replay
    page; everything else passes through untouched to the JSON API."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and _RECORDING_PAGE.match(scope["path"])
        ):
            accept = dict(scope["headers"]).get(b"accept", b"")
            if accept.startswith(b"text/html"):
                await _page("recording.html")(scope, receive, send)
                return
        await self.app(scope, receive, send)


@asynccontextmanager
async def running(services: Services) -> AsyncIterator[None]:
    """Chat presence counts this server's WHEP viewers per room."""
    chat = services.chat
    if chat is None:
        yield
        return
    chat.presence.watchers = lambda: {r["room"]: r["viewers"] for r in _sfu_rooms(services)}
    try:
        yield
    finally:
        chat.presence.watchers = dict  # the SFU stops next: its rooms are no longer there


async def home() -> Response:
    return _page("index.html")


async def studio() -> Response:
    return _page("studio.html")


async def watch(room: str) -> Response:
    return _page("watch.html")


def _dev_token_url(request: Request) -> str | None:
    """Where the pages get dev tokens: the admin listener (auto), here (on), nowhere."""
    svc = services(request)
    if not svc.settings.dev_tokens_enabled:
        return None
    if svc.settings.web_dev_tokens == "on" or svc.admin_port is None:
        return "/dev/token"
    return admin_url(svc.admin_port) + "/dev/token"


async def live(request: Request) -> JSONResponse:
    """Rooms live now (publisher connected), most watched first (RECORDING_ACCESS=private:
    only those a viewer token opens); where the pages get dev tokens (`dev_token_url`,
    null when off)."""
    svc = services(request)
    rooms = live_rooms(svc)
    access = svc.recording_access
    private = access is not None and access.private
    if access is not None and private:  # only rooms the viewer token (Bearer, ?token=) opens
        grant = access.grant(request)
        rooms = [r for r in rooms if isinstance(grant, Grant) and grant.allows(r["room"], "viewer")]
    return JSONResponse(
        {
            "rooms": rooms,
            "access": "private" if private else "public",
            "dev_tokens": svc.settings.dev_tokens_enabled,
            "dev_token_url": _dev_token_url(request),
        },
        headers={"Cache-Control": "no-store"},
    )


def _cors(request: Request) -> dict[str, str]:
    # the pages are served by the public listener and ask the admin one: a cross-origin
    # request, allowed for this server's own page origins only
    settings = services(request).settings
    own_origins = {
        settings.base_url.rstrip("/"),
        *(f"http://{name}:{settings.port}" for name in LOCAL_NAMES),
    }
    origin = request.headers.get("origin", "")
    if origin in own_origins:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {"Vary": "Origin"}


def _with_cors(response: Response, request: Request) -> Response:
    response.headers.update(_cors(request))
    return response


# dev tokens issued, per app as before (both listeners serve one app; tests build many)
_ISSUED: WeakKeyDictionary[Any, RateLimiter] = WeakKeyDictionary()


def _issued(request: Request) -> RateLimiter:
    limiter = _ISSUED.get(request.app)
    if limiter is None:
        limiter = _ISSUED[request.app] = RateLimiter(
            DEV_TOKENS_PER_S, DEV_TOKEN_BURST, time.monotonic
        )
    return limiter


async def dev_token_preflight(request: Request) -> Response:
    headers = _cors(request)
    if "Access-Control-Allow-Origin" in headers:
        headers["Access-Control-Allow-Methods"] = "POST"
        headers["Access-Control-Allow-Headers"] = "content-type"
        headers["Access-Control-Max-Age"] = "600"
    return Response(status_code=204, headers=headers)


async def dev_token(request: Request) -> Response:
    """Local development only: a viewer or chat token (never a publisher token) for
    anyone who asks, `{"room", "role"}`. With WEB_DEV_TOKENS=auto only on the admin
    listener; 403 when off. The token's identity is one per source address (`dev-…`),
    so chat rate limits hold per address however many tokens it takes; issuing is
    rate-limited per address too (429)."""
    settings = services(request).settings
    if not settings.dev_tokens_enabled:
        detail = "dev tokens are off (server not on loopback defaults); paste a token"
        return _with_cors(json_error(403, "forbidden", detail), request)
    if settings.web_dev_tokens == "auto" and (denied := admin_only(request, "dev tokens")):
        return _with_cors(denied, request)
    client = request.client.host if request.client else "unknown"
    issued = _issued(request)
    if not issued.allow(client):
        wait = max(1, round(issued.retry_after(client)))
        denied = json_error(429, "rate_limited", f"too many dev tokens; retry in {wait}s")
        denied.headers["Retry-After"] = str(wait)
        return _with_cors(denied, request)
    try:
        body = await read_model(request, TokenRequest, 1024)
    except BodyTooLarge as exc:
        return _with_cors(too_large(exc), request)
    secret = services(request).secret
    identity = "dev-" + hmac.new(secret.encode(), client.encode(), "sha256").hexdigest()[:12]
    token = issue_token(secret, body.room, body.role, identity, ttl_s=settings.token_ttl)
    return JSONResponse(
        {"token": token, "room": body.room, "role": body.role, "identity": identity},
        headers=_cors(request),
    )


def mount(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(RecordingPageMiddleware)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # the app's own routes, not an included APIRouter (see recording/api.py's mount)
    page: dict[str, Any] = {"methods": ["GET"], "include_in_schema": False}
    app.add_api_route("/", home, **page)
    app.add_api_route("/studio", studio, **page)
    app.add_api_route("/watch/{room}", watch, **page)
    app.add_api_route("/live", live, methods=["GET"], tags=["web"])
    app.add_api_route(
        "/dev/token", dev_token_preflight, methods=["OPTIONS"], include_in_schema=False
    )
    app.add_api_route(
        "/dev/token",
        dev_token,
        methods=["POST"],
        tags=["web"],
        openapi_extra=body_schema(TokenRequest),
    )
