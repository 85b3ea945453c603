"""HTTP helpers shared by the capabilities' routes: the error body, the auth rule,
capped request bodies.

Every request body is capped (issue 14.3): `BodyLimit`, an ASGI middleware, answers 413
at once when Content-Length says too much, and cuts a streamed (chunked) body off when
it passes the cap, replacing whatever the app was about to answer by the 413. Routes
that need a smaller cap, or must check a token before reading anything, read the body
themselves with `read_body`/`read_model` after their header checks.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tchat.auth import TokenError, TokenForbidden
from tchat.openapi import operation_id

MAX_BODY_BYTES = 64 * 1024  # the largest body any route takes (an SDP offer)
M = TypeVar("M", bound=BaseModel)


class ErrorBody(BaseModel):
    """What every error answers (HTTP 4xx/5xx)."""

    error: str = Field(
        description="Machine-readable code: bad_request, bad_sdp, unauthorized, forbidden, "
        "not_found, method_not_allowed, conflict, unsupported_media_type, rate_limited, "
        "unavailable, store_unavailable, storage_unavailable."
    )
    detail: str = Field(description="What is wrong, for a person.")


def json_error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error body every route uses: `{"error": code, "detail": why}`."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    """A request body past its cap; the route answers `too_large(exc)` (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


def too_large(exc: BodyTooLarge) -> JSONResponse:
    return json_error(413, "payload_too_large", str(exc))


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read only up to `limit` bytes; BodyTooLarge past it (nothing more is read)."""
    length = declared_length(request.scope["headers"])
    if length is not None and length > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


async def read_model(request: Request, model: type[M], limit: int) -> M:
    """A JSON body validated as `model`: BodyTooLarge, or RequestValidationError (answered
    as if FastAPI had parsed the body itself: the app's 400/415 error body)."""
    raw = await read_body(request, limit)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": f"JSON decode error: {exc}"}]
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def body_schema(model: type[BaseModel]) -> dict[str, object]:
    """`openapi_extra` documenting a JSON body that a route reads itself (`read_model`)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


class BodyLimit:
    """Cap every HTTP request body at `limit` bytes (413 `payload_too_large`)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        length = declared_length(scope["headers"])
        if length is not None and length > limit:
            await too_large(BodyTooLarge(limit))(scope, receive, send)
            return
        received = 0
        exceeded = False
        started = False

        async def capped_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # the app sees a client gone; whatever it answers is replaced below
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                started = True
                await too_large(BodyTooLarge(limit))(scope, receive, send)
                return
            if exceeded:
                return  # the rest of the app's (replaced) response
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:  # the app stopped without answering
            await too_large(BodyTooLarge(limit))(scope, receive, send)


def auth_failed(exc: TokenError) -> JSONResponse:
    """One rule for every route (docs/configuration … README "HTTP surface"): 401 when
    there is no valid token (missing, malformed, bad signature, expired), with a
    `WWW-Authenticate: Bearer` challenge; 403 when a valid token does not grant this
    room, role or session."""
    if isinstance(exc, TokenForbidden):
        return json_error(403, "forbidden", str(exc))
    challenge = 'Bearer realm="tchat"'
    if str(exc) != "missing token":
        challenge += ', error="invalid_token"'
    return json_error(401, "unauthorized", str(exc), {"WWW-Authenticate": challenge})


_DESCRIPTIONS = {
    400: "Bad request (the detail says which field or value).",
    401: "No valid token: missing, malformed, bad signature or expired.",
    403: "A valid token that does not grant this room, role or session.",
    404: "No such room, session or object.",
    409: "Conflict (the room already has a publisher).",
    412: "If-Match names another version (an ICE session restarted since).",
    413: "Request body too large.",
    415: "Wrong Content-Type for the body.",
    429: "Rate limited.",
    502: "The object store failed.",
    503: "Temporarily unavailable (full, overloaded, or a backing service is down).",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all with the ErrorBody schema."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


def api_router(tag: str) -> APIRouter:
    """A capability's routes, operation ids named as the app names them (tchat.openapi)."""
    return APIRouter(tags=[tag], generate_unique_id_function=operation_id)


def include(app: FastAPI, router: APIRouter) -> None:
    """A router's routes as the app's own entries. FastAPI's `include_router` adds one
    opaque entry per router, in which ApiCors (cors.py) finds no methods to answer a
    plain OPTIONS with; the routes themselves route and document the same either way."""
    app.router.routes.extend(router.routes)
