"""ICE restarts and trickled candidates as WHIP (RFC 9725 §4.3) and WHEP carry them: an
`application/trickle-ice-sdpfrag` body (RFC 8840) in a PATCH to the session URL.
Parsing the client's fragment and writing ours; no I/O.

A fragment whose ice-ufrag differs from the session's remote one asks for an ICE restart
(RFC 8839 §4.4.1.1.1: new credentials are what restarts ICE); one with the same ufrag
(or none) only trickles candidates. Every media section of a BUNDLE carries the same
credentials, so two different ufrags in one fragment are an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tchat.sfu.negotiated import LocalParams, Media, SdpError

MEDIA_TYPE = "application/trickle-ice-sdpfrag"
MAX_FRAGMENT_BYTES = 16 * 1024
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")  # ice-char (RFC 8839 §5.4)


@dataclass(frozen=True, slots=True)
class IceFragment:
    ufrag: str | None
    pwd: str | None
    candidates: tuple[str, ...] = ()  # the a=candidate values, unparsed
    end_of_candidates: bool = False


def _credential(name: str, value: str, low: int) -> str:
    if not low <= len(value) <= 256 or not _ICE_CHARS.fullmatch(value):
        raise SdpError(f"a={name} must be {low}-256 ice-chars")
    return value


def _one(name: str, values: set[str]) -> str | None:
    if len(values) > 1:
        raise SdpError(f"the fragment names {len(values)} different a={name} values")
    return next(iter(values), None)


def parse_fragment(text: str) -> IceFragment:
    """The credentials and candidates of a client's fragment; SdpError (HTTP 400) for a
    body that is not one."""
    ufrags: set[str] = set()
    pwds: set[str] = set()
    candidates: list[str] = []
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(f"not an SDP line: {line[:40]!r}")
        if line.startswith("a=ice-ufrag:"):
            ufrags.add(_credential("ice-ufrag", line[12:], 4))
        elif line.startswith("a=ice-pwd:"):
            pwds.add(_credential("ice-pwd", line[10:], 22))
        elif line.startswith("a=candidate:"):
            candidates.append(line[12:])
        elif line == "a=end-of-candidates":
            end = True
    ufrag, pwd = _one("ice-ufrag", ufrags), _one("ice-pwd", pwds)
    if pwd is not None and ufrag is None:
        raise SdpError("a=ice-pwd without a=ice-ufrag")
    return IceFragment(ufrag, pwd, tuple(candidates), end)


def write_fragment(local: LocalParams, media: list[Media]) -> str:
    """Our answer to an ICE restart: ice-lite, the new credentials and our candidates,
    in the BUNDLE's first media section (RFC 9725 §4.3.2's shape)."""
    bundled = [m for m in media if m.codec is not None] or media[:1]
    lines = ["a=ice-lite", "a=group:BUNDLE " + " ".join(m.mid for m in bundled)]
    if bundled:
        first = bundled[0]
        pt = first.codec.payload_type if first.codec is not None else 0
        lines += [f"m={first.kind} 9 UDP/TLS/RTP/SAVPF {pt}", f"a=mid:{first.mid}"]
    lines += [f"a=ice-ufrag:{local.ufrag}", f"a=ice-pwd:{local.pwd}"]
    for foundation, proto, port, prio, tcp_type in local.candidates():
        tail = f" tcptype {tcp_type}" if tcp_type else ""
        lines.append(f"a=candidate:{foundation} 1 {proto} {prio} {local.ip} {port} typ host{tail}")
    lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"
