"""Transport-wide congestion control feedback (RTCP RTPFB FMT 15), built and parsed.

draft-holmer-rmcat-transport-wide-cc-extensions-01: the sender stamps every RTP packet
with a transport-wide sequence number (header extension); the receiver reports, per
sequence number, whether it arrived and when (250 µs resolution, relative to a 64 ms
reference time). Chrome sends this feedback when the answer negotiates the extension
and `a=rtcp-fb:* transport-cc`. Pure functions, no I/O: the SFU parses, the test viewer
(`tchat.perf.webrtc_peer`) builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct

from tchat.sfu.rtcp import packets as rtcp_packets

RTPFB, FMT_TWCC = 205, 15
TICK_S = 0.00025  # receive delta unit
REF_S = 0.064  # reference time unit
_HEAD = Struct("!BBHII")  # V/P/FMT, PT, length, sender ssrc, media ssrc
_FCI = Struct("!HHI")  # base seq, status count, ref time (24) | fb count (8)
NOT_RECEIVED, SMALL, LARGE = 0, 1, 2
MAX_RUN = 0x1FFF
# Feedback is parsed per packet status: a viewer could ask for 65535 of them per TWCC
# packet and pack dozens of packets in a datagram. Honest feedback covers ~100 ms of
# packets; beyond this per datagram it is refused as malformed.
MAX_STATUS = 4096


@dataclass(frozen=True, slots=True)
class Feedback:
    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    fb_count: int
    arrivals: list[tuple[int, float | None]]  # (16-bit seq, arrival seconds or None)


def build(
    sender_ssrc: int,
    media_ssrc: int,
    base_seq: int,
    fb_count: int,
    arrivals: list[float | None],
) -> bytes:
    """Feedback for consecutive sequence numbers from `base_seq` (arrival seconds or None).

    Run-length chunks only (valid for every reader); deltas that do not fit 16 bits
    are clamped, which only happens with gaps of more than 8 s inside one report."""
    if not arrivals or len(arrivals) > 0xFFFF:
        raise ValueError("feedback needs 1..65535 packet statuses")
    first = next((a for a in arrivals if a is not None), None)
    if first is None:
        raise ValueError("feedback needs at least one received packet")
    ref = int(first // REF_S)
    prev = ref * 256  # in 250 µs ticks
    symbols: list[int] = []
    deltas = bytearray()
    for arrival in arrivals:
        if arrival is None:
            symbols.append(NOT_RECEIVED)
            continue
        ticks = round(arrival / TICK_S)
        delta = ticks - prev
        prev = ticks
        if 0 <= delta <= 255:
            symbols.append(SMALL)
            deltas.append(delta)
        else:
            symbols.append(LARGE)
            deltas += max(-32768, min(32767, delta)).to_bytes(2, "big", signed=True)
    chunks = bytearray()
    i = 0
    while i < len(symbols):
        sym, run = symbols[i], 1
        while i + run < len(symbols) and symbols[i + run] == sym and run < MAX_RUN:
            run += 1
        chunks += ((sym << 13) | run).to_bytes(2, "big")
        i += run
    body = (
        _FCI.pack(base_seq & 0xFFFF, len(arrivals), ((ref & 0xFFFFFF) << 8) | (fb_count & 0xFF))
        + chunks
        + deltas
    )
    body += bytes(-len(body) % 4)
    length = (8 + len(body)) // 4
    return _HEAD.pack(0x80 | FMT_TWCC, RTPFB, length, sender_ssrc, media_ssrc) + body


def parse_fci(sender_ssrc: int, media_ssrc: int, fci: bytes) -> Feedback:
    """The FCI of one TWCC packet; raises ValueError when malformed or truncated."""
    if len(fci) < 8:
        raise ValueError("TWCC feedback shorter than its fixed part")
    base_seq, count, ref_fb = _FCI.unpack_from(fci)
    if count == 0:
        raise ValueError("TWCC feedback with no packet status")
    if count > MAX_STATUS:
        raise ValueError(f"TWCC feedback with {count} packet statuses (at most {MAX_STATUS})")
    pos = 8
    symbols: list[int] = []
    while len(symbols) < count:
        if pos + 2 > len(fci):
            raise ValueError("TWCC packet chunks truncated")
        chunk = (fci[pos] << 8) | fci[pos + 1]
        pos += 2
        if not chunk & 0x8000:  # run length
            symbols.extend([(chunk >> 13) & 0x3] * (chunk & MAX_RUN))
        elif not chunk & 0x4000:  # 14 one-bit symbols
            symbols.extend((chunk >> (13 - k)) & 0x1 for k in range(14))
        else:  # 7 two-bit symbols
            symbols.extend((chunk >> (12 - 2 * k)) & 0x3 for k in range(7))
    del symbols[count:]
    ticks = (ref_fb >> 8) * 256
    arrivals: list[tuple[int, float | None]] = []
    for k, sym in enumerate(symbols):
        seq = (base_seq + k) & 0xFFFF
        if sym == NOT_RECEIVED:
            arrivals.append((seq, None))
            continue
        if sym == SMALL:
            if pos + 1 > len(fci):
                raise ValueError("TWCC receive deltas truncated")
            ticks += fci[pos]
            pos += 1
        elif sym == LARGE:
            if pos + 2 > len(fci):
                raise ValueError("TWCC receive deltas truncated")
            ticks += int.from_bytes(fci[pos : pos + 2], "big", signed=True)
            pos += 2
        else:
            raise ValueError("TWCC status symbol 3 is reserved")
        arrivals.append((seq, ticks * TICK_S))
    return Feedback(sender_ssrc, media_ssrc, base_seq, ref_fb & 0xFF, arrivals)


def find_feedback(plain: bytes) -> list[Feedback]:
    """The TWCC packets in a compound RTCP datagram (others skipped, padding removed as
    RFC 3550 §6.4.1 says: Chrome pads its feedback); ValueError if malformed."""
    out: list[Feedback] = []
    statuses = 0
    for fmt, pt, body in rtcp_packets(plain):
        if pt != RTPFB or fmt != FMT_TWCC:
            continue
        if len(body) < 8:
            raise ValueError("TWCC feedback shorter than its two SSRCs")
        ssrc, media = int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big")
        if len(body) >= 12:
            statuses += (body[10] << 8) | body[11]
            if statuses > MAX_STATUS:
                raise ValueError(f"TWCC feedback over {MAX_STATUS} packet statuses")
        out.append(parse_fci(ssrc, media, body[8:]))
    return out


# A publisher's feedback: per packet at most this many statuses (worst case ~3 bytes
# each, so a packet stays well under the MTU); older sequence numbers than WINDOW
# behind the newest are given up (a report that late is useless to the sender).
MAX_PER_PACKET = 256
WINDOW = 1024


class TwccReceiver:
    """Arrival times of one publisher's transport-wide sequence numbers, reported as
    feedback so its send-side bandwidth estimator ramps up (sans-I/O, injected time).

    Sequence numbers are unwrapped to a 64-bit counter; a packet older than the last
    report was already reported lost and is ignored (the sender has moved on)."""

    __slots__ = ("_arrivals", "_max", "_next", "fb_count")

    def __init__(self) -> None:
        self._arrivals: dict[int, float] = {}  # unwrapped seq → arrival seconds
        self._max = -1  # newest unwrapped seq seen
        self._next = -1  # first unwrapped seq not yet reported
        self.fb_count = 0

    def on_packet(self, seq: int, now: float) -> None:
        if self._max < 0:
            ext = self._next = self._max = seq & 0xFFFF
        else:
            delta = (seq - self._max) & 0xFFFF
            ext = self._max + delta if delta < 0x8000 else self._max + delta - 0x10000
            if ext < self._next:
                return
            if ext > self._max:
                self._max = ext
        self._arrivals[ext] = now
        if len(self._arrivals) > 2 * WINDOW:  # a sender far ahead of our reports
            floor = self._max - WINDOW
            self._arrivals = {k: v for k, v in self._arrivals.items() if k > floor}

    def feedback(self, sender_ssrc: int, media_ssrc: int) -> bytes | None:
        """One RTPFB packet for the next ≤ MAX_PER_PACKET unreported sequence numbers
        (call again for the rest), or None when nothing new arrived."""
        if self._max < 0:
            return None
        start = max(self._next, self._max - WINDOW + 1)
        if start > self._next:  # fell behind: forget what is beyond the window
            self._arrivals = {k: v for k, v in self._arrivals.items() if k >= start}
        while start <= self._max:
            end = min(self._max, start + MAX_PER_PACKET - 1)
            arrivals = [self._arrivals.pop(n, None) for n in range(start, end + 1)]
            self._next = end + 1
            if any(a is not None for a in arrivals):
                break
            start = end + 1  # nothing arrived in this span: nothing to report yet
        else:
            return None
        packet = build(sender_ssrc, media_ssrc, start, self.fb_count, arrivals)
        self.fb_count = (self.fb_count + 1) & 0xFF
        return packet
