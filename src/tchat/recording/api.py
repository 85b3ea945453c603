"""HTTP surface of recording: the catalog API and a CDN-like path serving HLS from storage.

`GET /recordings`, `GET /recordings/{id}` (with a playable URL) and
`GET /cdn/recordings/...`: objects straight from the store with their content
type and cache header (segments immutable, live playlists no-cache). In front
of S3 a real CDN would take this path's place; the URLs keep the same shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from tchat.config import Settings
from tchat.http import error_responses, json_error
from tchat.recording.catalog import STATES, Recording, UnknownRecording
from tchat.recording.service import RECORDINGS_PREFIX, RecordingService
from tchat.storage import NotFound, StoreError, validate_key
from tchat.storage.local import LocalStore

CDN_PATH = "/cdn/"


def recording_json(rec: Recording, base_url: str) -> dict[str, Any]:
    out = rec.to_json()
    # Live ones are watchable as they grow; a failed one keeps what was stored.
    playable = rec.state in ("recording", "finalizing") or (
        rec.state in ("available", "failed") and rec.segment_count > 0
    )
    out["playlist_url"] = f"{base_url}{CDN_PATH}{rec.playlist_key}" if playable else None
    return out


def _service(request: Request) -> RecordingService:
    service: RecordingService = request.app.state.recording
    return service


def mount(app: FastAPI, settings: Settings) -> None:
    base_url = settings.base_url

    @app.get("/recordings", tags=["recording"], responses=error_responses(400))
    async def list_recordings(
        request: Request,
        room: str | None = None,
        state: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> Response:
        if state is not None and state not in STATES:
            return json_error(400, "bad_request", f"state must be one of {', '.join(STATES)}")
        recs = _service(request).catalog.list(room=room, state=state, limit=limit)
        return JSONResponse({"recordings": [recording_json(r, base_url) for r in recs]})

    @app.get("/recordings/{rec_id}", tags=["recording"], responses=error_responses(404))
    async def get_recording(request: Request, rec_id: str) -> Response:
        try:
            rec = _service(request).get(rec_id)
        except UnknownRecording:
            return json_error(404, "not_found", f"no recording {rec_id!r}")
        return JSONResponse(recording_json(rec, base_url))

    async def cdn(request: Request, key: str) -> Response:
        """An HLS playlist or segment of a recording, as a CDN would serve it."""
        if not key.startswith(RECORDINGS_PREFIX):
            return json_error(404, "not_found", f"no object {key!r}")
        try:
            validate_key(key)
        except ValueError as exc:
            return json_error(400, "bad_request", str(exc))
        store = _service(request).store
        try:
            info = await store.head(key)
            if info is None:
                return json_error(404, "not_found", f"no object {key!r}")
            headers = {"Cache-Control": info.cache_control, "Access-Control-Allow-Origin": "*"}
            if isinstance(store, LocalStore) and not key.endswith(".m3u8"):
                # sendfile, ranges and ETag from the file itself. Not for live playlists:
                # one replaced between FileResponse's stat and its read would not match
                # the Content-Length already sent.
                return FileResponse(
                    store.path_of(key), media_type=info.content_type, headers=headers
                )
            body = b"" if request.method == "HEAD" else await store.get(key)
        except NotFound:
            return json_error(404, "not_found", f"no object {key!r}")
        except StoreError as exc:
            return json_error(502, "storage_unavailable", str(exc))
        if request.method == "HEAD":
            headers["Content-Length"] = str(info.size)
        # GET: the length of the body read, which may be a newer playlist than head saw
        return Response(body, media_type=info.content_type, headers=headers)

    cdn_doc: dict[str, Any] = {
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
    # one route per method: each needs its own OpenAPI operation id
    app.add_api_route(CDN_PATH + "{key:path}", cdn, methods=["GET"], name="cdn_get", **cdn_doc)
    app.add_api_route(CDN_PATH + "{key:path}", cdn, methods=["HEAD"], name="cdn_head", **cdn_doc)

    app.state.components.append(_component(settings))


def _component(
    settings: Settings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def recording(app: FastAPI) -> AsyncIterator[None]:
        service = RecordingService(settings)
        await service.open()
        app.state.recording = service
        try:
            yield
        finally:
            await service.close()

    return recording
