"""The one room-name rule: chat, SFU, recordings, tokens and storage all check it.

A room is 1–64 characters of ASCII letters, digits, `_`, `.` and `-`, starting with
a letter or digit: safe in a URL path, an HTTP header (`Location`), a log line, a
Redis channel and a storage key without escaping. `*` is not a room; it is the
wildcard a token may carry (auth.Grant).
"""

from __future__ import annotations

import re

# for OpenAPI/pydantic (anchored); `valid_room` uses fullmatch, as `$` in Python's re
# also matches before a trailing newline
ROOM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ROOM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ROOM_RULE = "1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit"


def valid_room(name: object) -> bool:
    return isinstance(name, str) and _ROOM.fullmatch(name) is not None


def check_room(name: str) -> str:
    """`name` if it is a room name; ValueError saying the rule otherwise."""
    if not valid_room(name):
        raise ValueError(f"invalid room name {name[:80]!r}: {ROOM_RULE}")
    return name
