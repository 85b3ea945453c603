"""ICE-lite (RFC 8445 §2.5): answer authenticated binding requests, track nomination.

`aioice.stun` parses and builds the messages; it keeps no ICE state, this does.
A lite agent never sends checks: the peer (full agent, controlling) nominates and
keeps sending consent checks (RFC 7675) that we time out on.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from aioice import stun

Addr = tuple[str, int]


class StunError(ValueError):
    """A STUN message we drop (malformed, wrong credentials, not a binding request)."""


def parse_request(data: bytes) -> tuple[stun.Message, str]:
    """(message, our ufrag) of a binding request; integrity is checked by the owner."""
    try:
        msg = stun.parse_message(data)
    except Exception as exc:  # aioice raises ValueError/struct.error/UnicodeError
        raise StunError(f"malformed STUN: {exc}") from None
    if msg.message_method != stun.Method.BINDING or msg.message_class != stun.Class.REQUEST:
        raise StunError("not a binding request")
    username = msg.attributes.get("USERNAME")
    if not isinstance(username, str) or ":" not in username:
        raise StunError("binding request without USERNAME")
    return msg, username.split(":", 1)[0]


def new_credentials() -> tuple[str, str]:
    """(ufrag, pwd): ufrag of ≥ 4 and pwd of ≥ 22 ice-chars (RFC 8839)."""
    return secrets.token_hex(4), secrets.token_hex(16)


@dataclass(slots=True)
class IceLite:
    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    created_at: float
    nominated: Addr | None = None
    last_check: float = -1.0
    candidates: set[Addr] = field(default_factory=set)

    def handle(self, msg: stun.Message, addr: Addr, now: float) -> bytes:
        """The success response to an authenticated request; raises StunError otherwise."""
        if not msg.check_message_integrity(self.local_pwd.encode()):
            raise StunError("bad MESSAGE-INTEGRITY")
        if msg.attributes["USERNAME"] != f"{self.local_ufrag}:{self.remote_ufrag}":
            raise StunError("USERNAME does not match the session")
        if "ICE-CONTROLLING" not in msg.attributes:
            raise StunError("a lite agent only answers a controlling peer")
        self.last_check = now
        self.candidates.add(addr)
        if "USE-CANDIDATE" in msg.attributes:
            self.nominated = addr
        resp = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=msg.transaction_id,
        )
        resp.attributes["XOR-MAPPED-ADDRESS"] = addr
        resp.add_message_integrity(self.local_pwd.encode())
        return bytes(resp)

    def consent_expired(self, now: float, timeout_s: float) -> bool:
        last = self.last_check if self.last_check >= 0 else self.created_at
        return now - last > timeout_s
