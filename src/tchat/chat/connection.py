"""One chat WebSocket's state, without I/O: what a frame makes it send and do.

`ChatConnection` holds who the socket is (its grant, from the `token` query or an auth
frame), whether it watches over HLS (presence), and when its token expires. For each
frame it returns actions for the shell (chat/api.py) to carry out in order: frames to
send, a hello to build, a post or a moderation action to run against the service,
the HLS presence to count, a close. Token checks go through the `verify` callable it
is given (signature and expiry: PyJWT reads the clock there); the expiry of a post
is checked against the `now` passed in. Like h11 or websockets' protocol objects, it
never awaits; the shell's loop is receive → `receive(data, now)` → act.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tchat.auth import Grant, TokenError
from tchat.chat.moderation import Action as ModerationAction
from tchat.chat.moderation import ModerationError, parse_action
from tchat.chat.protocol import (
    Auth,
    Moderate,
    Ping,
    Post,
    ProtocolError,
    Watch,
    decode_frame,
    error_frame,
)

CLOSE_TOKEN_EXPIRED = 4401  # the socket's token expired: reconnect with a fresh one


@dataclass(frozen=True, slots=True)
class SendFrame:
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SendHello:
    """Send the hello (its moderation and presence fields come from the service)."""


@dataclass(frozen=True, slots=True)
class ArmExpiry:
    """Close with CLOSE_TOKEN_EXPIRED at `at` (Unix time), replacing an earlier timer."""

    at: float


@dataclass(frozen=True, slots=True)
class PostMessage:
    grant: Grant
    text: str
    nonce: str | None


@dataclass(frozen=True, slots=True)
class RunModeration:
    grant: Grant | None
    action: ModerationAction
    nonce: str | None


@dataclass(frozen=True, slots=True)
class WatchHls:
    """Count this socket as an HLS watcher of the room (until it closes)."""


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame refused with this error code (the shell counts it)."""

    code: str


Step = SendFrame | SendHello | ArmExpiry | PostMessage | RunModeration | WatchHls | Close | Rejected


class ChatConnection:
    def __init__(
        self, verify: Callable[[str], Grant], max_chars: int, token: str | None = None
    ) -> None:
        self._verify = verify
        self.max_chars = max_chars
        self.token = token
        self.grant: Grant | None = None
        self.watching = False
        self.closed = False

    def open(self) -> list[Step]:
        """On accept, before the socket joins the room: the query token (an error frame
        if it is bad: the socket stays a reader). The hello follows the join."""
        if not self.token:
            return []
        try:
            self.grant = self._verify(self.token)
        except TokenError as exc:
            return [SendFrame(error_frame("unauthorized", str(exc)))]
        return [ArmExpiry(self.grant.expires_at)]

    def receive(self, data: str | bytes, now: float) -> list[Step]:
        """One frame from the client."""
        nonce = None
        try:
            frame = decode_frame(data, self.max_chars)
            if isinstance(frame, Ping):
                return [SendFrame({"type": "pong"})]
            if isinstance(frame, Auth):
                try:
                    self.grant = self._verify(frame.token)
                except TokenError as exc:
                    raise ProtocolError("unauthorized", str(exc)) from None
                return [ArmExpiry(self.grant.expires_at), SendHello()]
            if isinstance(frame, Post):
                nonce = frame.nonce
                return self._post(frame, now)
            if isinstance(frame, Moderate):
                nonce = frame.nonce
                action = parse_action(frame.action, frame.args)
                return [RunModeration(self.grant, action, nonce)]
            if isinstance(frame, Watch) and not self.watching:
                self.watching = True  # an HLS watch page: counted as watching (presence)
                return [WatchHls()]
            return []
        except ProtocolError as exc:
            return self.refused(exc, nonce)

    def _post(self, frame: Post, now: float) -> list[Step]:
        if self.grant is None:
            raise ProtocolError("unauthorized", "posting needs a chat token (auth frame)")
        if now >= self.grant.expires_at:  # checked on every post
            self.closed = True
            detail = "the token expired; reconnect with a fresh one"
            return [
                Rejected("token_expired"),
                SendFrame(error_frame("token_expired", detail, frame.nonce)),
                Close(CLOSE_TOKEN_EXPIRED, "token expired"),
            ]
        return [PostMessage(self.grant, frame.text, frame.nonce)]

    @staticmethod
    def refused(exc: ProtocolError, nonce: str | None) -> list[Step]:
        """A frame refused: counted, and an error frame (with a moderation error's fields,
        e.g. until / retry_after) carrying the frame's nonce."""
        err = error_frame(exc.code, exc.detail, nonce)
        if isinstance(exc, ModerationError):
            err |= exc.fields
        return [Rejected(exc.code), SendFrame(err)]
