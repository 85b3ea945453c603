"""A published layer as the SFU receives it: RTP accounting (what the receiver reports
tell the publisher), the NACK cache, the sender reports' times. Part of the forwarder
(sfu/forwarder.py); no I/O, no clock."""

from __future__ import annotations

RTP_OVERHEAD = 20  # header + TWCC/playout extension bytes per packet sent to a viewer
CACHE_SIZE = 1024  # packets per layer kept for NACKs (~2-3 s of 720p)


class PacketCache:
    """The last CACHE_SIZE packets of one layer by sequence number."""

    __slots__ = ("_slots",)

    def __init__(self) -> None:
        self._slots: list[tuple[int, int, int, bytes] | None] = [None] * CACHE_SIZE

    def put(self, seq: int, ts: int, marker: int, payload: bytes) -> None:
        self._slots[seq & (CACHE_SIZE - 1)] = (seq, ts, marker, payload)

    def get(self, seq: int) -> tuple[int, int, int, bytes] | None:
        entry = self._slots[seq & (CACHE_SIZE - 1)]
        return entry if entry is not None and entry[0] == seq else None


class Layer:
    """One received stream (a simulcast layer or the only stream) and its receive stats."""

    __slots__ = (
        "_rate_marks",
        "_rr",
        "cache",
        "index",
        "last_seen",
        "lost",
        "max_seq",
        "octets",
        "packets",
        "padding",
        "rate_bps",
        "sr_arrival",
        "sr_ntp_mid",
        "ssrc",
    )

    def __init__(self, index: int, ssrc: int) -> None:
        self.index = index
        self.ssrc = ssrc
        self.cache = PacketCache()
        self.last_seen = -1e9
        self.packets = 0
        self.octets = 0  # payload bytes received
        self.padding = 0  # padding-only packets received (counted as received in reports)
        # sent rate of this layer as RTP (payload + header per packet, what TWCC feedback
        # counts) over the last few seconds (Track.tick)
        self.rate_bps = 0.0
        self._rate_marks: list[tuple[float, int]] = []
        self.max_seq = -1  # highest sequence number received (16 bits)
        self.lost = 0  # cumulative, as reported
        self.sr_ntp_mid = 0  # middle 32 bits of the publisher's last SR (for LSR)
        self.sr_arrival = 0.0
        self._rr = (-1, 0)  # (extended highest seq, packets) at the previous report

    def received(self, seq: int, ts: int, marker: int, payload: bytes, now: float) -> None:
        """A media packet of this layer arrived: kept for NACK answers and counted."""
        self.cache.put(seq, ts, marker, payload)
        self.last_seen = now
        self.packets += 1
        self.octets += len(payload)
        if (seq - self.max_seq) & 0xFFFF < 0x8000:
            self.max_seq = seq

    def measure(self, now: float) -> None:
        """Once a second: the payload rate over the last ~4 s (two keyframe intervals)."""
        marks = self._rate_marks
        marks.append((now, self.octets + RTP_OVERHEAD * self.packets))
        if len(marks) > 5:
            del marks[0]
        span = marks[-1][0] - marks[0][0]
        if span >= 2.0:  # less would be one keyframe more or less
            self.rate_bps = 8 * (marks[-1][1] - marks[0][1]) / span

    def first_packet(self, seq: int) -> None:
        self.max_seq = seq
        self._rr = (seq - 1, 0)

    def report(self, now: float) -> tuple[int, int, int, int, int]:
        """(fraction_lost, cumulative lost, extended highest seq, lsr, dlsr) since the last
        call: what a receiver report block about this stream says (RFC 3550 §6.4.1)."""
        prev_ext, prev_packets = self._rr
        # < 32768 packets per layer between reports, so the nearest forward step is right
        delta = (self.max_seq - prev_ext) & 0xFFFF
        ext = prev_ext + delta
        received = self.packets + self.padding - prev_packets
        lost = max(0, delta - received)
        self.lost += lost
        self._rr = (ext, self.packets + self.padding)
        fraction = min(255, (lost << 8) // delta) if delta else 0
        dlsr = int((now - self.sr_arrival) * 65536) if self.sr_ntp_mid else 0
        return fraction, self.lost, ext & 0xFFFFFFFF, self.sr_ntp_mid, dlsr


# (first out sequence number, source layer or None for our padding, seq offset, ts offset):
# from `first` on, out seq s carries the layer's packet (s - seq offset) & 0xFFFF; for
# padding, the last slot is the timestamp the padding went out with
