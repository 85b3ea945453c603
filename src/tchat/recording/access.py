"""Who may fetch a recording's HLS (live or finished): one door with WHEP (issue 14.7).

RECORDING_ACCESS=public: anyone, with plain `/cdn/recordings/<id>/…` URLs (the default,
as before). private: the catalog and `/live` answer only to a viewer token for the room,
and HLS is served only under a signed path,

    /cdn/s/<expiry>.<signature>/recordings/<id>/index.m3u8

whose signature (HMAC of the expiry and the recording's prefix, with a key derived
from the token secret) covers every object of that recording. Playlists name their
segments relatively, so every HLS client (hls.js, Safari, FFmpeg) resolves them under
the same signed path without rewriting. A signed URL never outlives the token it was
issued for. Pure functions; the routes are in recording/api.py.
"""

from __future__ import annotations

import hashlib
import hmac
import re

SIGNED = "s/"
_GRANT = re.compile(r"^(\d{1,12})\.([0-9a-f]{32})$")


def hls_key(secret: str) -> bytes:
    """Derived so a leaked HLS link says nothing about the token secret."""
    return hmac.new(secret.encode(), b"tchat-hls", hashlib.sha256).digest()


def recording_prefix(key: str) -> str:
    """`recordings/<id>/` of an object key (what one signature covers)."""
    parts = key.split("/", 2)
    return f"{parts[0]}/{parts[1]}/" if len(parts) == 3 else ""


def _sig(hkey: bytes, prefix: str, expires: int) -> str:
    return hmac.new(hkey, f"{expires}:{prefix}".encode(), hashlib.sha256).hexdigest()[:32]


def signed_path(hkey: bytes, key: str, expires: int) -> str:
    """`s/<expires>.<sig>/<key>`: the path under /cdn/ of an object, valid until `expires`."""
    return f"{SIGNED}{expires}.{_sig(hkey, recording_prefix(key), expires)}/{key}"


def check_signed(hkey: bytes, path: str, now: float) -> tuple[str | None, str]:
    """(object key, "") for a valid signed path under /cdn/, or (None, why not)."""
    if not path.startswith(SIGNED):
        return None, "not a signed path"
    grant, _, key = path[len(SIGNED) :].partition("/")
    match = _GRANT.match(grant)
    prefix = recording_prefix(key)
    if match is None or not prefix:
        return None, "malformed signed path"
    expires = int(match.group(1))
    if not hmac.compare_digest(match.group(2), _sig(hkey, prefix, expires)):
        return None, "bad signature"
    if expires < now:
        return None, "signed URL expired"
    return key, ""
