"""The `ObjectStore` protocol every storage backend implements, and its pure helpers.

Keys are `/`-separated relative paths (`recordings/<id>/seg_00000.ts`). Content
types and cache headers are decided here once so the local store, S3 and the
CDN-like HTTP path agree on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


class StoreError(Exception):
    """The store could not do what was asked (unreachable, refused, I/O error)."""


class NotFound(StoreError):
    """No object under that key."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    cache_control: str


@dataclass(frozen=True, slots=True)
class LifecycleResult:
    """Outcome of applying a prefix-scoped expiration rule to the store."""

    supported: bool
    verified: bool
    prefix: str
    days: int
    detail: str


@runtime_checkable
class ObjectStore(Protocol):
    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None, cache_control: str = ""
    ) -> None: ...

    async def put_file(
        self, key: str, path: Path, *, content_type: str | None = None, cache_control: str = ""
    ) -> int:
        """Store the file's bytes under key; returns the size stored."""
        ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; raises NotFound."""
        ...

    async def head(self, key: str) -> ObjectInfo | None: ...

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with prefix, sorted by key."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under prefix; returns how many were deleted."""
        ...

    async def apply_expiration(self, prefix: str, days: int) -> LifecycleResult:
        """Install (and read back) a rule expiring objects under prefix after days."""
        ...


_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]*$")
MAX_KEY_LEN = 512

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
# Segments never change once written; a playlist changes until ENDLIST.
CACHE_IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_LIVE = "no-cache"
CACHE_FINAL_PLAYLIST = "public, max-age=300"


def validate_key(key: str) -> str:
    """The key if it is a safe relative path, else ValueError saying why."""
    if not key or len(key) > MAX_KEY_LEN:
        raise ValueError(f"object key must be 1-{MAX_KEY_LEN} characters")
    for part in key.split("/"):
        if not _KEY_PART.match(part):
            raise ValueError(
                f"object key {key!r}: each part must be letters, digits, '_', '.', '=', '-' "
                "and not start with '.' or '-'"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix is a key ending in '/' (or empty for everything)."""
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise ValueError(f"prefix {prefix!r} must end with '/'")
    validate_key(prefix[:-1])
    return prefix


def content_type_for(key: str) -> str:
    suffix = "." + key.rsplit(".", 1)[-1] if "." in key.rsplit("/", 1)[-1] else ""
    return CONTENT_TYPES.get(suffix.lower(), "application/octet-stream")


def cache_control_for(key: str, body: bytes | None = None) -> str:
    """Cache policy of an object: segments immutable, live playlists not cached."""
    if key.endswith(".m3u8"):
        if body is not None and b"#EXT-X-ENDLIST" in body:
            return CACHE_FINAL_PLAYLIST
        return CACHE_LIVE
    return CACHE_IMMUTABLE
