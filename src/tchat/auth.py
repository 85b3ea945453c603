"""Signed room tokens (JWT, HS256): who may publish, watch or chat in a room."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Literal, get_args

import jwt

from tchat.rooms import check_room

Role = Literal["publisher", "viewer", "chat", "moderator"]
ROLES: tuple[str, ...] = get_args(Role)

# A publisher (the broadcaster) may also chat, moderate and watch its own room; a
# moderator may chat, moderate and watch, never publish; a chat token may also watch.
_GRANTS: dict[str, frozenset[str]] = {
    "publisher": frozenset({"publisher", "viewer", "chat", "moderator"}),
    "moderator": frozenset({"moderator", "chat", "viewer"}),
    "chat": frozenset({"chat", "viewer"}),
    "viewer": frozenset({"viewer"}),
}


class TokenError(Exception):
    """Missing, malformed, expired or insufficient token; the message says which.

    HTTP answers it with 401 (no valid token: authenticate) unless it is a
    TokenForbidden (a valid token that does not grant this: 403)."""


class TokenForbidden(TokenError):
    """A valid token for another room or role."""


@dataclass(frozen=True, slots=True)
class Grant:
    room: str
    role: str
    identity: str
    expires_at: float

    def allows(self, room: str, role: str) -> bool:
        return self.room in (room, "*") and role in _GRANTS.get(self.role, frozenset())


def issue_token(
    secret: str,
    room: str,
    role: str,
    identity: str = "",
    ttl_s: float = 86400.0,
    now: float | None = None,
) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if room != "*":
        check_room(room)
    issued = time.time() if now is None else now
    claims = {
        "room": room,
        "role": role,
        # unique unless given: rate limits and moderation go by identity
        "sub": identity or f"{role}-{secrets.token_hex(8)}",
        "iat": int(issued),
        "exp": int(issued + ttl_s),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_token(secret: str, token: str | None) -> Grant:
    """The grant of a genuine, unexpired token, whatever room and role it names."""
    if not token:
        raise TokenError("missing token")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    return Grant(
        room=str(claims.get("room", "")),
        role=str(claims.get("role", "")),
        identity=str(claims.get("sub", "")),
        expires_at=float(claims["exp"]),
    )


def verify_token(secret: str, token: str | None, room: str, role: str) -> Grant:
    """Return the grant or raise TokenError naming what is wrong."""
    grant = decode_token(secret, token)
    if not grant.allows(room, role):
        raise TokenForbidden(
            f"token for room {grant.room!r} as {grant.role!r} does not allow {role!r} in {room!r}"
        )
    return grant


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
