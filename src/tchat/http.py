"""HTTP helpers shared by the capabilities' routes: the error body, the auth rule."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tchat.auth import TokenError, TokenForbidden


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
    415: "Wrong Content-Type for the body.",
    429: "Rate limited.",
    502: "The object store failed.",
    503: "Temporarily unavailable (full, overloaded, or a backing service is down).",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all with the ErrorBody schema."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}
