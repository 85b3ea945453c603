"""Signed requests of the cluster's control API (issue 14.10).

Every request between `tchat serve` and its SFU node processes (and from one node to
another, for a relay) carries a signature over what it asks for, made with the
control key derived from the token secret (`control_key`); the key itself never
travels. A request is refused if the signature does not match its method, path,
query and body, if its timestamp is more than `MAX_SKEW_S` away, or if its nonce was
seen before (a replay). Sans-I/O: `sign` and `ControlVerifier.verify` take the clock;
`ControlAuth` (httpx) and `SignedOnly` (ASGI) are the thin shells.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Generator

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TIME_HEADER = "x-tchat-time"
NONCE_HEADER = "x-tchat-nonce"
SIG_HEADER = "x-tchat-signature"
MAX_SKEW_S = 30.0  # clocks of one host (or a cluster's hosts, NTP-synced) agree this well
MAX_NONCES = 200_000  # requests remembered in a window of 2 × MAX_SKEW_S
MAX_BODY_BYTES = 256 * 1024


def control_key(secret: str) -> str:
    """The key instances and signalling share; derived so the token secret never travels."""
    return hmac.new(secret.encode(), b"tchat-sfu-control", hashlib.sha256).hexdigest()


def _mac(key: str, method: str, target: str, stamp: str, nonce: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    text = "\n".join((method.upper(), target, stamp, nonce, digest))
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def sign(key: str, method: str, target: str, body: bytes, now: float) -> dict[str, str]:
    """Headers signing a request for `target` (path and query, as sent)."""
    stamp = f"{now:.3f}"
    nonce = secrets.token_hex(16)
    return {
        TIME_HEADER: stamp,
        NONCE_HEADER: nonce,
        SIG_HEADER: _mac(key, method, target, stamp, nonce, body),
    }


class ControlVerifier:
    """Checks signatures; remembers nonces for the window in which a replay would pass."""

    def __init__(self, key: str, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce → its timestamp

    def verify(self, method: str, target: str, headers: dict[str, str], body: bytes) -> str | None:
        """None if the request is genuine and fresh; otherwise why not."""
        stamp, nonce = headers.get(TIME_HEADER, ""), headers.get(NONCE_HEADER, "")
        sig = headers.get(SIG_HEADER, "")
        if not (stamp and nonce and sig):
            return "unsigned request"
        try:
            at = float(stamp)
        except ValueError:
            return "bad timestamp"
        expected = _mac(self.key, method, target, stamp, nonce, body)
        if not hmac.compare_digest(sig, expected):
            return "bad signature"
        now = self.clock()
        if abs(now - at) > MAX_SKEW_S:
            return f"stale request ({now - at:+.0f} s)"
        self._forget(now)
        if nonce in self._seen:
            return "replayed request"
        if len(self._seen) >= MAX_NONCES:
            return "too many requests in the replay window"
        self._seen[nonce] = at
        return None

    def _forget(self, now: float) -> None:
        # insertion order is close to time order; a stale entry found first is dropped
        while self._seen:
            nonce, at = next(iter(self._seen.items()))
            if now - at <= 2 * MAX_SKEW_S:
                break
            del self._seen[nonce]


class ControlAuth(httpx.Auth):
    """Signs each httpx request with the control key."""

    requires_request_body = True

    def __init__(self, key: str, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.clock = clock

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        target = request.url.raw_path.decode("ascii")
        request.headers.update(
            sign(self.key, request.method, target, request.content, self.clock())
        )
        yield request


class SignedOnly:
    """ASGI middleware: 403 for any request whose signature does not verify."""

    def __init__(self, app: ASGIApp, verifier: ControlVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                await _refuse(send, 413, "control request too large")
                return
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        why = self.verifier.verify(scope["method"], target.decode("latin-1"), headers, bytes(body))
        if why is not None:
            await _refuse(send, 403, why)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    payload = json.dumps({"status": status, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
