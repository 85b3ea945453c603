"""Who may act on a WHIP/WHEP session: the token's grant for the room and role, and the
session URL bound to the token that created it (an HMAC of session and token, so any
process sharing the secret checks it without state)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from fastapi import Request
from fastapi.responses import JSONResponse

from tchat.auth import Grant, TokenError, TokenForbidden, bearer, verify_token
from tchat.http import auth_failed, json_error
from tchat.rooms import ROOM_RULE, valid_room
from tchat.services import services
from tchat.sfu.peer import Role


def authorize(request: Request, room: str, role: Role) -> tuple[Grant, str] | JSONResponse:
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


def source(request: Request) -> str:
    """The client address (a trusted proxy's X-Forwarded-For, see TCHAT_TRUSTED_PROXIES)."""
    return request.client.host if request.client else ""


def session_tag(secret: str, room: str, role: Role, session: str, token: str) -> str:
    """What binds a session URL to the token that created it (16 url-safe chars)."""
    msg = "\0".join(("tchat-sfu-session", role, room, session, token)).encode()
    digest = hmac.new(secret.encode(), msg, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode()


def owned(request: Request, room: str, role: Role, resource: str, token: str) -> str | JSONResponse:
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


def session_of(request: Request, room: str, role: Role, resource: str) -> str | JSONResponse:
    """The backend's session id of a session URL segment, if the request's token may act
    on it (it created the session); else the error response (400/401/403/404)."""
    auth = authorize(request, room, role)
    if isinstance(auth, JSONResponse):
        return auth
    return owned(request, room, role, resource, auth[1])
