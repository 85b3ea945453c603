"""The chat WebSocket protocol, sans-I/O: frames in, decisions and frames out.

Client → server frames (JSON text): `{"type": "auth", "token": …}`,
`{"type": "post", "text": …, "nonce": …}`, `{"type": "ping"}`,
`{"type": "moderate", "action": …, "nonce": …, …}` (arguments checked by
`chat/moderation.py`), `{"type": "watch", "transport": "hls"}` (presence).
Server → client: `hello`, `message`, `ack` (after the store has the message),
`error` (`code`, `detail`, echoing `nonce`), `pong`. Errors never close the
connection except where the WebSocket protocol itself does (1007, 1009).
"""

from __future__ import annotations

import json
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_FRAME_BYTES = 16 * 1024
MAX_NONCE_CHARS = 64


class ProtocolError(Exception):
    """The client sent something we cannot accept; `code` is machine-readable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class Post:
    text: str
    nonce: str | None


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Moderate:
    action: str
    args: dict[str, Any]
    nonce: str | None


@dataclass(frozen=True, slots=True)
class Watch:
    transport: str


Frame = Auth | Post | Ping | Moderate | Watch


def decode_frame(data: str | bytes, max_chars: int) -> Frame:
    """Parse and validate one client frame, or raise ProtocolError saying what is wrong."""
    if isinstance(data, bytes):
        if len(data) > MAX_FRAME_BYTES:
            raise ProtocolError("frame_too_large", f"frame exceeds {MAX_FRAME_BYTES} bytes")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("invalid_utf8", f"frame is not valid UTF-8: {exc.reason}") from None
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"frame exceeds {MAX_FRAME_BYTES} bytes")
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            "malformed_json", f"frame is not JSON: {exc.msg} at {exc.pos}"
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed_frame", "frame must be a JSON object")
    kind = obj.get("type")
    if kind == "post":
        nonce = obj.get("nonce")
        if nonce is not None and (not isinstance(nonce, str) or len(nonce) > MAX_NONCE_CHARS):
            raise ProtocolError("bad_nonce", f"nonce must be a string of ≤ {MAX_NONCE_CHARS} chars")
        return Post(validate_text(obj.get("text"), max_chars), nonce)
    if kind == "auth":
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("bad_token", "auth frame needs a token string")
        return Auth(token)
    if kind == "ping":
        return Ping()
    if kind == "moderate":
        nonce = obj.get("nonce")
        if nonce is not None and (not isinstance(nonce, str) or len(nonce) > MAX_NONCE_CHARS):
            raise ProtocolError("bad_nonce", f"nonce must be a string of ≤ {MAX_NONCE_CHARS} chars")
        action = obj.get("action")
        if not isinstance(action, str):
            raise ProtocolError("unknown_action", "moderate frame needs an action string")
        return Moderate(action, obj, nonce)
    if kind == "watch":
        if obj.get("transport") != "hls":
            raise ProtocolError("malformed_frame", 'watch frame needs "transport": "hls"')
        return Watch("hls")
    raise ProtocolError(
        "unknown_type",
        f"unknown frame type {kind!r}; expected post, auth, ping, moderate, watch",
    )


def validate_text(text: object, max_chars: int) -> str:
    if not isinstance(text, str):
        raise ProtocolError("bad_text", "text must be a string")
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise ProtocolError("empty_text", "text is empty")
    if len(text) > max_chars:
        raise ProtocolError("text_too_long", f"text has {len(text)} characters; max {max_chars}")
    for ch in text:
        if ch in "\n\t":
            continue
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs") or ch in "\u2028\u2029":
            raise ProtocolError(
                "control_character", f"text contains control character U+{ord(ch):04X}"
            )
    return text


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def error_frame(code: str, detail: str, nonce: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if nonce is not None:
        frame["nonce"] = nonce
    return frame


class RateLimiter:
    """Token bucket per key: `rate` per second, `burst` at once; the clock is injected.

    Buckets are kept in least-recently-used order. A bucket idle for `burst / rate`
    seconds is full again, so forgetting it changes nothing: each call forgets those
    from the old end (amortised O(1), each bucket is forgotten once). Past `max_keys`
    the least recently used bucket goes even if not full; its author gets at most one
    fresh burst, and only after `max_keys` other authors posted since.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float], max_keys: int = 100_000
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self.idle_s = self.burst / rate  # after this long a bucket is full
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # (tokens, last)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str) -> bool:
        now = self.clock()
        buckets = self._buckets
        state = buckets.pop(key, None)
        tokens, last = state if state is not None else (self.burst, now)
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        buckets[key] = (tokens - 1.0 if allowed else tokens, now)  # now the newest
        while buckets:
            oldest, (_, seen) = next(iter(buckets.items()))
            if now - seen < self.idle_s and len(buckets) <= self.max_keys:
                break
            del buckets[oldest]
        return allowed

    def retry_after(self, key: str) -> float:
        state = self._buckets.get(key)
        if state is None:
            return 0.0
        tokens, last = state
        tokens = min(self.burst, tokens + (self.clock() - last) * self.rate)
        return max(0.0, (1.0 - tokens) / self.rate)
