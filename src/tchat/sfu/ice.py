"""ICE-lite (RFC 8445 §2.5): answer authenticated binding requests, track nomination.

`aioice.stun` parses and builds the messages; it keeps no ICE state, this does.
A lite agent never sends checks: the peer (full agent, controlling) nominates, then
keeps the pair alive. Browsers send consent checks (RFC 7675 binding requests) every
few seconds; libnice-based peers (GStreamer, many native apps) send binding
*indications* instead (RFC 8445 §11 keepalives), and RFC 7675 asks nothing of a lite
agent but to answer checks. So a session is alive while authenticated traffic of the
peer arrives: binding requests with MESSAGE-INTEGRITY, or SRTP/SRTCP that passes
authentication on the selected pair (`IceLite.heard`). Indications carry no
integrity (anyone who can spoof the peer's address could send them), so they are
accepted as keepalives but never extend the session by themselves.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from aioice import stun

Addr = tuple[str, int]


class StunError(ValueError):
    """A STUN message we drop (malformed, wrong credentials, not a binding request)."""


class Keepalive(Exception):
    """A binding indication (RFC 8445 §11 keepalive): nothing to answer."""


def parse_request(data: bytes) -> tuple[stun.Message, str]:
    """(message, our ufrag) of a binding request; integrity is checked by the owner.
    Raises Keepalive for a binding indication, StunError for anything else."""
    try:
        msg = stun.parse_message(data)
    except Exception as exc:  # aioice raises ValueError/struct.error/UnicodeError
        raise StunError(f"malformed STUN: {exc}") from None
    if msg.message_method == stun.Method.BINDING and msg.message_class == stun.Class.INDICATION:
        raise Keepalive
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
    last_check: float = -1.0  # last authenticated binding request
    last_heard: float = -1.0  # last SRTP/SRTCP that passed authentication (selected pair)
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

    def heard(self, now: float) -> None:
        """Authenticated media or RTCP from the peer on the selected pair: it is alive."""
        self.last_heard = now

    def consent_expired(self, now: float, timeout_s: float) -> bool:
        """No authenticated traffic from the peer for `timeout_s` (since creation if none)."""
        last = max(self.last_check, self.last_heard)
        return now - (last if last >= 0 else self.created_at) > timeout_s
