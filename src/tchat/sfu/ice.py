"""ICE-lite (RFC 8445 §2.5): answer authenticated binding requests, track nomination,
and send media only to an address that proved it receives.

`aioice.stun` parses and builds the messages; it keeps no ICE state, this does.
A lite agent never sends checks of its own for connectivity: the peer (full agent,
controlling) nominates, then keeps the pair alive. Browsers send consent checks
(RFC 7675 binding requests) every few seconds; libnice-based peers (GStreamer, many
native apps) send binding *indications* instead (RFC 8445 §11 keepalives), and RFC 7675
asks nothing of a lite agent but to answer checks. So a session is alive while
authenticated traffic of the peer arrives: binding requests with MESSAGE-INTEGRITY, or
SRTP/SRTCP that passes authentication on the selected pair (`IceLite.heard`).
Indications carry no integrity (anyone who can spoof the peer's address could send
them), so they are accepted as keepalives but never extend the session by themselves.

An authenticated check proves the sender knows the session's credentials, not that
its source address is where it lives: a viewer can spoof the source of one check
with USE-CANDIDATE and, if we followed it, turn its stream on any victim. So an
address becomes usable for media only once it answered a binding request of ours,
which carries a fresh transaction id and the peer's own credentials (browsers,
libnice, aioice answer checks from a lite agent like any other). Until then all we
send it is our answers and our check, within what it sent us plus one allowance
(`UNCONFIRMED_ALLOWANCE`), and at most `MAX_ADDRESSES` addresses per session.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from aioice import stun

from tchat.sfu.tcp import wire_addr

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


MAX_ADDRESSES = 8  # addresses one session may check from
UNCONFIRMED_ALLOWANCE = 256  # bytes beyond what it sent that an unconfirmed address may get
CHECK_RETRY_S = 0.5  # a lost check is sent again on a later request, not sooner
_CONTROLLED_TIEBREAKER = 0  # we never take the controlling role


def parse_response(data: bytes) -> stun.Message | None:
    """A binding success response, or None (anything else is not one of ours)."""
    try:
        msg = stun.parse_message(data)
    except Exception:
        return None
    if msg.message_method != stun.Method.BINDING or msg.message_class != stun.Class.RESPONSE:
        return None
    return msg


def new_credentials() -> tuple[str, str]:
    """(ufrag, pwd): ufrag of ≥ 4 and pwd of ≥ 22 ice-chars (RFC 8839)."""
    return secrets.token_hex(4), secrets.token_hex(16)


@dataclass(slots=True)
class _Unconfirmed:
    """An address that checked in but has not answered us yet."""

    received: int = 0  # bytes of its authenticated requests
    sent: int = 0  # bytes we sent it (answers and checks)
    check: bytes = b""  # transaction id of our outstanding check
    check_at: float = -1.0


@dataclass(slots=True)
class IceLite:
    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    created_at: float
    remote_pwd: str = ""
    nominated: Addr | None = None
    last_check: float = -1.0  # last authenticated binding request
    last_heard: float = -1.0  # last SRTP/SRTCP that passed authentication (selected pair)
    candidates: set[Addr] = field(default_factory=set)
    confirmed: set[Addr] = field(default_factory=set)  # answered one of our checks
    unconfirmed: dict[Addr, _Unconfirmed] = field(default_factory=dict)
    previous: tuple[str, ...] = ()  # remote ufrags before the last restarts (stale PATCHes)

    def handle(self, msg: stun.Message, addr: Addr, now: float, size: int = 0) -> list[bytes]:
        """What to send `addr` for an authenticated request of `size` bytes: the success
        response and, while `addr` is unconfirmed, our check when the budget allows.
        Raises StunError for a request we drop."""
        if not msg.check_message_integrity(self.local_pwd.encode()):
            raise StunError("bad MESSAGE-INTEGRITY")
        if msg.attributes["USERNAME"] != f"{self.local_ufrag}:{self.remote_ufrag}":
            raise StunError("USERNAME does not match the session")
        if "ICE-CONTROLLING" not in msg.attributes:
            raise StunError("a lite agent only answers a controlling peer")
        if addr not in self.candidates and len(self.candidates) >= MAX_ADDRESSES:
            raise StunError("too many addresses for one session")
        self.last_check = now
        self.candidates.add(addr)
        if "USE-CANDIDATE" in msg.attributes:
            self.nominated = addr
        resp = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=msg.transaction_id,
        )
        resp.attributes["XOR-MAPPED-ADDRESS"] = wire_addr(addr)
        resp.add_message_integrity(self.local_pwd.encode())
        out = [bytes(resp)]
        if addr in self.confirmed or not self.remote_pwd:
            return out
        state = self.unconfirmed.setdefault(addr, _Unconfirmed())
        state.received += size
        state.sent += len(out[0])
        if state.check and now - state.check_at < CHECK_RETRY_S:
            return out
        check = self._check()
        if state.sent + len(check) <= state.received + UNCONFIRMED_ALLOWANCE:
            parsed = stun.parse_message(check)
            state.check, state.check_at = parsed.transaction_id, now
            state.sent += len(check)
            out.append(check)
        return out

    def _check(self) -> bytes:
        """Our binding request to the peer, with its credentials (RFC 8445 §7.2.2)."""
        msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        msg.attributes["USERNAME"] = f"{self.remote_ufrag}:{self.local_ufrag}"
        msg.attributes["PRIORITY"] = 1
        msg.attributes["ICE-CONTROLLED"] = _CONTROLLED_TIEBREAKER
        msg.add_message_integrity(self.remote_pwd.encode())
        return bytes(msg)

    def handle_response(self, msg: stun.Message, addr: Addr) -> bool:
        """True when `msg` answers our outstanding check of `addr` (same transaction id,
        signed with the peer's password): `addr` is confirmed from now on."""
        state = self.unconfirmed.get(addr)
        if state is None or not state.check or msg.transaction_id != state.check:
            return False
        if not msg.check_message_integrity(self.remote_pwd.encode()):
            return False
        del self.unconfirmed[addr]
        self.confirmed.add(addr)
        return True

    def restart(
        self, local: tuple[str, str], remote: tuple[str, str], keep: Addr | None
    ) -> set[Addr]:
        """An ICE restart (RFC 8445 §9): new credentials both ways; every address must
        prove itself again under them, except `keep` (where media flows now), which goes
        on carrying media until the peer nominates another. DTLS and SRTP are untouched.
        Returns the addresses forgotten."""
        self.previous = (*self.previous[-3:], self.remote_ufrag)
        self.local_ufrag, self.local_pwd = local
        self.remote_ufrag, self.remote_pwd = remote
        forgotten = self.candidates - {keep} if keep else set(self.candidates)
        self.candidates -= forgotten
        self.confirmed -= forgotten
        self.unconfirmed.clear()
        self.nominated = keep  # a new nomination must come under the new credentials
        return forgotten

    def forget(self, addr: Addr) -> None:
        """An address that cannot be reached any more (its TCP connection closed)."""
        self.candidates.discard(addr)
        self.confirmed.discard(addr)
        self.unconfirmed.pop(addr, None)
        if self.nominated == addr:
            self.nominated = None

    def heard(self, now: float) -> None:
        """Authenticated media or RTCP from the peer on the selected pair: it is alive."""
        self.last_heard = now

    def consent_expired(self, now: float, timeout_s: float) -> bool:
        """No authenticated traffic from the peer for `timeout_s` (since creation if none)."""
        last = max(self.last_check, self.last_heard)
        return now - (last if last >= 0 else self.created_at) > timeout_s
