"""HTTP surface of recording: the catalog API and a CDN-like path serving HLS from storage.

`GET /recordings`, `GET /recordings/{id}` (with a playable URL) and
`GET /cdn/recordings/...`: objects straight from the store with their content
type and cache header (segments immutable, live playlists no-cache). In front
of S3 a real CDN would take this path's place; the URLs keep the same shape.
RECORDING_ACCESS=private puts all of it behind a viewer token (recording/access.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from tchat.auth import Grant, TokenError, bearer, decode_token
from tchat.config import Settings
from tchat.http import error_responses, json_error
from tchat.recording.access import SIGNED, check_signed, hls_key, signed_path
from tchat.recording.catalog import STATES, Recording, UnknownRecording
from tchat.recording.service import RECORDINGS_PREFIX, RecordingService
from tchat.rooms import ROOM_RULE, valid_room
from tchat.services import Services, require, services
from tchat.storage import NotFound, ObjectStore, StoreError, validate_key
from tchat.storage.local import LocalStore
from tchat.storage.s3 import S3Store

CDN_PATH = "/cdn/"


class Access:
    """The HLS door of one deployment (recording/access.py): public, or private (a viewer
    token for the room; signed /cdn URLs that never outlive it)."""

    def __init__(self, settings: Settings) -> None:
        self.private = settings.recording_access == "private"
        self.ttl_s = settings.recording_url_ttl
        self.presign = self.private and settings.recording_s3_presign and settings.storage == "s3"
        self.base_url = settings.base_url
        self._key: bytes | None = None

    def key(self, request: Request) -> bytes:
        if self._key is None:
            self._key = hls_key(services(request).secret)
        return self._key

    def grant(self, request: Request) -> Grant | JSONResponse | None:
        """Private mode: the caller's token (Bearer header or `?token=`) or the 401/403;
        public mode: None (no token needed)."""
        if not self.private:
            return None
        token = bearer(request.headers.get("authorization")) or request.query_params.get("token")
        try:
            grant = decode_token(services(request).secret, token)
        except TokenError as exc:
            status = 401 if not token else 403
            return json_error(status, "unauthorized" if status == 401 else "forbidden", str(exc))
        if not grant.allows(grant.room, "viewer"):
            return json_error(403, "forbidden", f"a {grant.role!r} token cannot watch")
        return grant

    def playlist_url(self, request: Request, rec: Recording, grant: Grant | None) -> str:
        if grant is None:
            return f"{self.base_url}{CDN_PATH}{rec.playlist_key}"
        expires = int(min(time.time() + self.ttl_s, grant.expires_at))
        return (
            f"{self.base_url}{CDN_PATH}{signed_path(self.key(request), rec.playlist_key, expires)}"
        )


def recording_json(
    rec: Recording, base_url: str, playlist_url: str | None = None
) -> dict[str, Any]:
    out = rec.to_json()
    # Live ones are watchable as they grow; a failed one keeps what was stored.
    playable = rec.state in ("recording", "finalizing") or (
        rec.state in ("available", "failed") and rec.segment_count > 0
    )
    url = playlist_url or f"{base_url}{CDN_PATH}{rec.playlist_key}"
    out["playlist_url"] = url if playable else None
    return out


def _service(request: Request) -> RecordingService:
    return require(services(request).recording, "recording")


def _access(request: Request) -> Access:
    return require(services(request).recording_access, "recording access")


def _presigned_playlist(store: ObjectStore, key: str, body: bytes, ttl_s: float) -> bytes:
    """The playlist with each segment URI replaced by a presigned S3 URL (S3Store only)."""
    assert isinstance(store, S3Store)
    prefix = key.rsplit("/", 1)[0] + "/"
    lines = []
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            line = store.presigned_url(prefix + line, int(ttl_s))
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()


async def list_recordings(
    request: Request,
    room: str | None = None,
    state: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> Response:
    """Recordings, newest first. With RECORDING_ACCESS=private: a viewer token (Bearer
    or `?token=`) is needed, and lists its room's recordings only."""
    if room is not None and not valid_room(room):
        return json_error(400, "bad_request", f"invalid room name: {ROOM_RULE}")
    if state is not None and state not in STATES:
        return json_error(400, "bad_request", f"state must be one of {', '.join(STATES)}")
    access = _access(request)
    grant = access.grant(request)
    if isinstance(grant, JSONResponse):
        return grant
    if grant is not None and grant.room != "*":
        if room is not None and room != grant.room:
            return json_error(403, "forbidden", f"the token is for room {grant.room!r}")
        room = grant.room
    recs = _service(request).catalog.list(room=room, state=state, limit=limit)
    base_url = access.base_url
    return JSONResponse(
        {
            "recordings": [
                recording_json(r, base_url, access.playlist_url(request, r, grant)) for r in recs
            ]
        }
    )


async def get_recording(request: Request, rec_id: str) -> Response:
    """One recording and its playlist URL (signed for the token's lifetime in private
    mode, where a viewer token for its room is needed)."""
    access = _access(request)
    grant = access.grant(request)
    if isinstance(grant, JSONResponse):
        return grant
    try:
        rec = _service(request).get(rec_id)
    except UnknownRecording:
        return json_error(404, "not_found", f"no recording {rec_id!r}")
    if grant is not None and not grant.allows(rec.room, "viewer"):
        return json_error(403, "forbidden", f"the token is for room {grant.room!r}")
    return JSONResponse(
        recording_json(rec, access.base_url, access.playlist_url(request, rec, grant))
    )


def _object_key(request: Request, access: Access, key: str) -> str | JSONResponse:
    """The store key a /cdn path names, or why it is not served."""
    if key.startswith(SIGNED):
        signed, why = check_signed(access.key(request), key, time.time())
        if signed is None:
            return json_error(403, "forbidden", why)
        key = signed
    elif access.private and key.startswith(RECORDINGS_PREFIX):
        return json_error(
            403, "forbidden", "recordings are private: use the playlist_url of the recording"
        )
    if not key.startswith(RECORDINGS_PREFIX):
        return json_error(404, "not_found", f"no object {key!r}")
    try:
        validate_key(key)
    except ValueError as exc:
        return json_error(400, "bad_request", str(exc))
    return key


async def cdn(request: Request, key: str) -> Response:
    """Objects of recordings: `/cdn/recordings/…` (public mode) or the signed
    `/cdn/s/<expiry>.<signature>/recordings/…` a recording's playlist_url gives."""
    access = _access(request)
    found = _object_key(request, access, key)
    if isinstance(found, JSONResponse):
        return found
    key = found
    store = _service(request).store
    try:
        info = await store.head(key)
        if info is None:
            return json_error(404, "not_found", f"no object {key!r}")
        headers = {"Cache-Control": info.cache_control, "Access-Control-Allow-Origin": "*"}
        playlist = key.endswith(".m3u8")
        if isinstance(store, LocalStore) and not playlist:
            # sendfile, ranges and ETag from the file itself. Not for live playlists:
            # one replaced between FileResponse's stat and its read would not match
            # the Content-Length already sent.
            return FileResponse(store.path_of(key), media_type=info.content_type, headers=headers)
        if request.method == "HEAD":
            headers["Content-Length"] = str(info.size)
            return Response(b"", media_type=info.content_type, headers=headers)
        body = await store.get(key)
        if playlist and access.presign:
            body = _presigned_playlist(store, key, body, access.ttl_s)
    except NotFound:
        return json_error(404, "not_found", f"no object {key!r}")
    except StoreError as exc:
        return json_error(502, "storage_unavailable", str(exc))
    # the length of the body read, which may be a newer playlist than head saw
    return Response(body, media_type=info.content_type, headers=headers)


_CDN_DOC: dict[str, Any] = {
    "tags": ["recording"],
    "response_class": Response,
    "responses": {
        200: {
            "description": "The object (playlist or MPEG-TS segment).",
            "content": {
                "application/vnd.apple.mpegurl": {"schema": {"type": "string"}},
                "video/mp2t": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **error_responses(400, 404, 502),
    },
}


@asynccontextmanager
async def running(services: Services) -> AsyncIterator[None]:
    """The recording service: catalog, stored objects, recorders (the SFU's too)."""
    service = RecordingService(services.settings)
    await service.open()
    services.recording = service
    try:
        yield
    finally:
        await service.close()
        services.recording = None  # a closed service answers 503, not a driver error


def mount(app: FastAPI, settings: Settings) -> None:
    # the app's own routes, not an included APIRouter: ApiCors (cors.py) answers OPTIONS
    # from each route's methods, which FastAPI's included router does not show
    get: dict[str, Any] = {"methods": ["GET"], "tags": ["recording"]}
    app.add_api_route("/recordings", list_recordings, responses=error_responses(400), **get)
    app.add_api_route("/recordings/{rec_id}", get_recording, responses=error_responses(404), **get)
    # one route per method: each needs its own OpenAPI operation id
    app.add_api_route(CDN_PATH + "{key:path}", cdn, methods=["GET"], name="cdn_get", **_CDN_DOC)
    app.add_api_route(CDN_PATH + "{key:path}", cdn, methods=["HEAD"], name="cdn_head", **_CDN_DOC)
