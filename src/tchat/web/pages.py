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

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from tchat.auth import issue_token
from tchat.config import Settings
from tchat.http import json_error

STATIC = Path(__file__).parent / "static"
ROOM_RE = r"^[A-Za-z0-9_.-]{1,64}$"
_RECORDING_PAGE = re.compile(r"^/recordings/[A-Za-z0-9_-]{1,64}/?$")


class TokenRequest(BaseModel):
    room: str = Field(pattern=ROOM_RE)
    role: Literal["viewer", "chat"] = "chat"


def _page(name: str) -> FileResponse:
    # pages are tiny and change with the code: always revalidate
    return FileResponse(
        STATIC / name, media_type="text/html", headers={"Cache-Control": "no-cache"}
    )


def live_rooms(app: FastAPI) -> list[dict[str, Any]]:
    """Rooms whose publisher is connected, with their viewer count (WHEP sessions on this
    server), live recording and, from presence, `watching` (WHEP + HLS pages, every
    instance) and `chatting` (chat sockets, every instance)."""
    live = getattr(app.state, "live_recording", None)
    chat = getattr(app.state, "chat", None)
    out = []
    for room in _sfu_rooms(app):
        room["recording_id"] = _live_recording_id(app, live, room["room"])
        if chat is not None:
            room.update(chat.presence.of(room["room"]))
        out.append(room)
    return sorted(out, key=lambda r: (-r["viewers"], r["room"]))


def _sfu_rooms(app: FastAPI) -> list[dict[str, Any]]:
    """Live rooms of this server's SFU (worker or cluster) with their WHEP viewers."""
    cluster = getattr(app.state, "sfu_cluster", None)
    per_worker: list[dict[str, dict[str, Any]]]
    if cluster is not None:  # the instances' last heartbeats (≤ 1 s old); this server's only
        per_worker = [
            inst.stats.get("live_rooms") or {} for inst in cluster.supervisor.instances.values()
        ]
    else:
        per_worker = [app.state.sfu.live_rooms()]
    merged: dict[str, dict[str, Any]] = {}
    for rooms in per_worker:
        for name, r in rooms.items():
            agg = merged.setdefault(name, {"room": name, "viewers": 0, "live_for_s": None})
            agg["viewers"] += r["viewers"]
            if r["live_for_s"] is not None:
                agg["live_for_s"] = r["live_for_s"]
    # edge viewers of a room whose origin is gone are not a live room
    return [room for room in merged.values() if room["live_for_s"] is not None]


def _live_recording_id(app: FastAPI, live: Any, room: str) -> str | None:
    if live is not None:
        rec_id: str | None = live.recording_of(room)
        return rec_id
    recording = getattr(app.state, "recording", None)  # cluster: the nodes record
    if recording is None:
        return None
    recs = recording.catalog.list(room=room, state="recording", limit=1)
    return recs[0].id if recs else None


LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]"}


def _local_request(request: Request) -> bool:
    """Addressed to this machine by name (Host) and not relayed by a proxy."""
    host = request.headers.get("host", "").rsplit(":", 1)[0].lower()
    relayed = "x-forwarded-for" in request.headers or "forwarded" in request.headers
    return host in LOCAL_HOSTS and not relayed


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


def mount(app: FastAPI, settings: Settings) -> None:
    dev_tokens = settings.dev_tokens_enabled
    app.add_middleware(RecordingPageMiddleware)

    @asynccontextmanager
    async def component(app: FastAPI) -> AsyncIterator[None]:
        chat = getattr(app.state, "chat", None)
        if chat is not None:  # presence counts this server's WHEP viewers per room
            chat.presence.watchers = lambda: {r["room"]: r["viewers"] for r in _sfu_rooms(app)}
        yield

    app.state.components.append(component)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return _page("index.html")

    @app.get("/studio", include_in_schema=False)
    async def studio() -> Response:
        return _page("studio.html")

    @app.get("/watch/{room}", include_in_schema=False)
    async def watch(room: str) -> Response:
        return _page("watch.html")

    @app.get("/live", tags=["web"])
    async def live(request: Request) -> JSONResponse:
        """Rooms live now (publisher connected), most watched first."""
        return JSONResponse(
            {"rooms": live_rooms(request.app), "dev_tokens": dev_tokens},
            headers={"Cache-Control": "no-store"},
        )

    @app.post("/dev/token", tags=["web"])
    async def dev_token(body: TokenRequest, request: Request) -> Response:
        """Local development only: a viewer or chat token for anyone who asks (never a
        publisher token). 403 unless WEB_DEV_TOKENS allows it."""
        if not dev_tokens:
            return json_error(
                403,
                "forbidden",
                "dev tokens are off (server not on loopback defaults); paste a token",
            )
        if settings.web_dev_tokens == "auto" and not _local_request(request):
            # a reverse proxy on this host, or a DNS-rebound page, is not local use
            return json_error(403, "forbidden", "dev tokens are served to local requests only")
        secret: str = request.app.state.secret
        token = issue_token(secret, body.room, body.role, ttl_s=settings.token_ttl)
        return JSONResponse({"token": token, "room": body.room, "role": body.role})
