"""One viewer's copy of a track: the rewrite of SSRC, payload type, sequence number and
timestamp across layer switches and padding, protection and send, the transport-wide
sequence and RTX, and what bounds its retransmissions. Part of the forwarder
(sfu/forwarder.py, whose docstring tells the whole path); no I/O, no clock."""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct

from tchat.sfu.layer import CACHE_SIZE, Layer

_PACK = Struct("!BBHII").pack
# header with a one-byte extension block whose first element is the TWCC sequence number
_PACK_TW = Struct("!BBHIIHHBH").pack
TWCC_RING = 4096  # sent packets remembered per viewer for feedback (~10 s at 400 pkt/s)
PAD_MAX = 255  # RTP padding is at most 255 bytes per packet
NACK_MAX = 64  # retransmissions per RTCP datagram (all its NACK items together)
# rewrite segments kept per viewer track (layer switches, padding bursts): padding without
# RTX opens two every 20 ms while a probe runs, so this covers ≥ 5 s (the cache: ~2.5 s)
HISTORY = 512
HISTORY_SPAN = 0x2000  # packets: older ones are past every cache; re-anchored per second
RTT_DEFAULT_S = 0.05  # until the viewer's receiver reports give its round-trip time
# a sequence number is resent at most once per 3/4 of a round trip (a re-NACK for a lost
# answer comes one RTT after the first), the window bounded by these
RESEND_RTT_SHARE = 0.75
RESEND_WINDOW_S = (0.01, 0.2)  # (an RTT read off a starved receiver's RRs runs to 1 s+)
RETRANSMIT_RATIO = 1.0  # retransmitted bytes per 1 s ≤ this × the viewer's delivered rate
RETRANSMIT_FLOOR_BPS = 64_000  # … but at least this (a new viewer's rate is not known yet)
LOW, HIGH = 0, 2

Protect = Callable[[bytes], bytes]
Send = Callable[[bytes], None]


class RetransmitBudget:
    """One viewer's retransmission allowance: the bytes resent in any 1 s window (ten
    100 ms slots) stay ≤ `ratio` × the rate delivered to it over the last second, as
    libwebrtc's sender limits its own retransmissions (pure: `now` is passed in)."""

    __slots__ = ("_floor", "_slot", "_slots", "_total", "denied", "limit", "ratio")

    def __init__(self, ratio: float = RETRANSMIT_RATIO, floor_bps: float = RETRANSMIT_FLOOR_BPS):
        self.ratio = ratio
        self.limit = ratio * floor_bps / 8  # bytes per 1 s window
        self._floor = floor_bps
        self._slots = [0] * 10
        self._slot = 0  # index of the current 100 ms slot since the epoch
        self._total = 0
        self.denied = 0

    def set_rate(self, delivered_bps: float) -> None:
        """The rate delivered to the viewer over the last second (media, bits/s)."""
        self.limit = self.ratio * max(delivered_bps, self._floor) / 8

    def allow(self, nbytes: int, now: float) -> bool:
        slot = int(now * 10)
        if slot != self._slot:
            for i in range(max(self._slot + 1, slot - 9), slot + 1):
                self._total -= self._slots[i % 10]
                self._slots[i % 10] = 0
            self._slot = slot
        if self._total + nbytes > self.limit:
            self.denied += 1
            return False
        self._slots[slot % 10] += nbytes
        self._total += nbytes
        return True


class TwccSender:
    """One viewer's transport-wide sequence numbers and what was sent under each."""

    __slots__ = ("sent", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.sent: list[tuple[int, float, int] | None] = [None] * TWCC_RING

    def note(self, seq: int, now: float, size: int) -> None:
        self.sent[seq & (TWCC_RING - 1)] = (seq, now, size)

    def lookup(self, seq: int) -> tuple[float, int] | None:
        """(send time, size) of transport-wide sequence number `seq`, if still known."""
        entry = self.sent[seq & (TWCC_RING - 1)]
        return (entry[1], entry[2]) if entry is not None and entry[0] == seq else None


Segment = tuple[int, "Layer | None", int, int]


class DownTrack:
    """One viewer's outbound stream of one track, and its rewrite state."""

    __slots__ = (
        "abr_layer",
        "answered",
        "clock_rate",
        "current",
        "ext_head",
        "ext_tail",
        "fraction_lost",
        "frames",
        "history",
        "jitter",
        "last_seq",
        "last_time",
        "last_ts",
        "manual",
        "max_layer",
        "nack_stats",
        "octets",
        "packets",
        "padded",
        "protect",
        "pt",
        "rr_lost",
        "rtt_s",
        "rtx_octets",
        "rtx_pt",
        "rtx_seq",
        "rtx_ssrc",
        "send",
        "seq_offset",
        "skipped",
        "ssrc",
        "switches",
        "target",
        "ts_offset",
        "tw",
    )

    def __init__(
        self,
        ssrc: int,
        pt: int,
        clock_rate: int,
        protect: Protect,
        send: Send,
        max_layer: int = HIGH,
        first_seq: int = 0,
        first_ts: int = 0,
    ) -> None:
        self.ssrc = ssrc
        self.pt = pt
        self.clock_rate = clock_rate
        self.protect = protect
        self.send = send
        self.max_layer = max_layer
        self.current = -1  # layer being forwarded; -1 until the first keyframe
        self.target = -1
        self.seq_offset = 0
        self.ts_offset = 0
        self.last_seq = (first_seq - 1) & 0xFFFF  # highest sequence number sent
        self.last_ts = first_ts
        self.last_time = -1.0
        self.history: list[Segment] = []
        self.switches = 0
        self.packets = 0
        self.octets = 0
        self.frames = 0  # packets sent with the marker bit (video: frames completed)
        self.padded = 0  # padding bytes sent (probes)
        self.skipped = 0  # the publisher's padding-only packets closed up behind
        self.fraction_lost = 0
        self.rr_lost = 0
        self.jitter = 0
        self.rtt_s = 0.0  # from the viewer's receiver reports; 0: not known
        self.abr_layer = HIGH  # the adaptive policy's target; PAUSED (-1) pauses
        # the owner picks the layer (switch_at_keyframe); the per-second retarget leaves it
        self.manual = False
        self.tw: TwccSender | None = None
        self.ext_head = (0, 0)  # (extension words, TWCC id byte) when tw is set
        self.ext_tail = b""  # extension elements after the TWCC one, padded
        # RTX (RFC 4588): retransmissions and probe padding on their own SSRC (0: none)
        self.rtx_ssrc = 0
        self.rtx_pt = 0
        self.rtx_seq = 0
        self.rtx_octets = 0  # retransmitted bytes sent (RTX or not), packets on the wire
        # out seq → when it was last resent (one slot per cached packet), made on first use
        self.answered: list[tuple[int, float] | None] | None = None
        self.nack_stats = NackStats()

    def new_twcc(self) -> TwccSender:
        """A transport-wide sequence for this viewer's tracks (native ones keep theirs in
        a native ring the fan-out writes)."""
        return TwccSender()

    def route(self, fd: int, addr: tuple[str, int] | None, send: Send) -> None:
        """Where this viewer's packets go: `send` (the native path sends by `fd` to `addr`
        instead when both are given, a UDP socket and address)."""
        self.send = send

    def enable_twcc(self, tw: TwccSender, twcc_id: int) -> None:
        """Stamp transport-wide sequence numbers from now on (playout delay once set)."""
        self.tw = tw
        self.set_playout_delay(0, 0, 0)
        self.ext_head = (self.ext_head[0], (twcc_id << 4) | 1)

    def enable_rtx(self, ssrc: int, pt: int, first_seq: int = 0) -> None:
        """Send retransmissions and probe padding as RTX on `ssrc` with payload type `pt`."""
        self.rtx_ssrc, self.rtx_pt, self.rtx_seq = ssrc, pt, first_seq & 0xFFFF

    def set_playout_delay(self, playout_id: int, min_ms: int, max_ms: int) -> None:
        """The playout-delay extension (10 ms units) every packet carries from now on."""
        tail = b"\x00"  # pads the 3-byte TWCC element to a word
        if playout_id:
            lo, hi = min(4095, min_ms // 10), min(4095, max_ms // 10)
            value = (lo << 12) | hi
            tail = bytes([(playout_id << 4) | 2]) + value.to_bytes(3, "big")
            tail += bytes(-(3 + len(tail)) % 4)
        self.ext_tail = tail
        self.ext_head = ((3 + len(tail)) // 4, self.ext_head[1])

    def header_size(self) -> int:
        return 12 + (4 + 4 * self.ext_head[0] if self.tw is not None else 0)

    def packet(
        self, marker_pt: int, seq: int, ts: int, payload: bytes, now: float, ssrc: int = 0
    ) -> bytes:
        """One outgoing packet (not the hot path's inlined copy: NACK answers, padding);
        on the media SSRC unless `ssrc` is given (RTX)."""
        ssrc = ssrc or self.ssrc
        tw = self.tw
        if tw is None:
            return _PACK(0x80, marker_pt, seq, ts, ssrc) + payload
        s = tw.seq
        tw.seq = (s + 1) & 0xFFFF
        words, idb = self.ext_head
        pkt = _PACK_TW(0x90, marker_pt, seq, ts, ssrc, 0xBEDE, words, idb, s)
        pkt += self.ext_tail + payload
        tw.note(s, now, len(pkt))
        return pkt

    def pad(self, nbytes: int, now: float) -> int:
        """Send padding-only packets (a bandwidth probe) totalling about `nbytes`.

        With RTX they go on the RTX stream (its own numbering: the media stream never
        sees them, as libwebrtc's probes). Without, they take sequence numbers of the
        media stream, so the caller (`Track.pad`) sends them only between frames: a
        padding packet inside a frame leaves that frame forever incomplete in the
        viewer's jitter buffer (its sequence numbers were received, so never NACKed)."""
        if self.last_time < 0 or nbytes <= 0:
            return 0
        rtx = self.rtx_ssrc
        first = (self.last_seq + 1) & 0xFFFF
        sent = 0
        count = 0
        while sent < nbytes:
            size = min(PAD_MAX, max(1, nbytes - sent))
            body = bytes(size - 1) + bytes([size])
            if rtx:
                seq = self.rtx_seq
                self.rtx_seq = (seq + 1) & 0xFFFF
                pkt = self.packet(self.rtx_pt, seq, self.last_ts, body, now, rtx)
            else:
                seq = (first + count) & 0xFFFF
                pkt = self.packet(self.pt, seq, self.last_ts, body, now)
            self.send(self.protect(bytes([pkt[0] | 0x20]) + pkt[1:]))
            count += 1
            sent += len(pkt)
        self.padded += sent
        if not rtx:
            # the padding holds `count` numbers; the media after it moves on by as many
            last = self.history[-1] if self.history else None
            self.last_seq = (first + count - 1) & 0xFFFF
            self.seq_offset = (self.seq_offset + count) & 0xFFFF
            self._segment(first, None, 0, self.last_ts)
            if last is not None:
                self._segment(self.last_seq + 1, last[1], self.seq_offset, self.ts_offset)
        return sent

    def skip(self) -> None:
        """The publisher's padding-only packet took the next source number and is not
        forwarded: close the gap (the viewer would see a loss it can never recover)."""
        last = self.history[-1] if self.history else None
        if last is None or last[1] is None:
            return
        self.seq_offset = (self.seq_offset - 1) & 0xFFFF
        self.skipped += 1
        self._segment(self.last_seq + 1, last[1], self.seq_offset, self.ts_offset)

    def switch_to(self, layer: Layer, seq: int, ts: int, now: float) -> None:
        """Re-base offsets so this packet follows the last one sent."""
        out_seq = (self.last_seq + 1) & 0xFFFF
        if self.last_time < 0:
            out_ts = self.last_ts
        else:
            # the new layer's clock is unrelated: advance by the wall time elapsed
            out_ts = self.last_ts + max(1, int((now - self.last_time) * self.clock_rate))
        self.seq_offset = (out_seq - seq) & 0xFFFF
        self.ts_offset = (out_ts - ts) & 0xFFFFFFFF
        self._segment(out_seq, layer, self.seq_offset, self.ts_offset)
        self.current = layer.index
        self.switches += 1

    def _segment(self, first: int, layer: Layer | None, seq_off: int, ts_off: int) -> None:
        seg = (first & 0xFFFF, layer, seq_off, ts_off)
        history = self.history
        if history and history[-1][0] == seg[0]:
            history[-1] = seg  # nothing was sent under the previous one
        else:
            history.append(seg)
            if len(history) > HISTORY:
                del history[0]

    def segment_of(self, out_seq: int) -> Segment | None:
        """The segment `out_seq` was sent under; None if not sent yet or too old.

        Segments are in sending order, so their ages (packets since their first one)
        fall along the list: a binary search finds the newest one that began at or
        before `out_seq` (a segment opened for the next packet has a wrapped age)."""
        last = self.last_seq
        age = (last - out_seq) & 0xFFFF
        if age >= HISTORY_SPAN:
            return None
        history = self.history
        hi = len(history)
        while hi and (last - history[hi - 1][0]) & 0xFFFF >= 0x8000:
            hi -= 1  # opened for the next packet: nothing sent under it yet
        lo = 0
        while lo < hi:  # first index whose age is < `age`
            mid = (lo + hi) // 2
            if (last - history[mid][0]) & 0xFFFF >= age:
                lo = mid + 1
            else:
                hi = mid
        return history[lo - 1] if lo else None

    def reanchor(self) -> None:
        """Once a second: forget segments whose packets are all older than HISTORY_SPAN
        and move the start of the oldest kept one inside it, so that no age reaches the
        16-bit wrap (where it would read as a segment opened for the next packet)."""
        history = self.history
        last = self.last_seq
        old = -1
        for i, seg in enumerate(history):
            age = (last - seg[0]) & 0xFFFF
            if HISTORY_SPAN <= age < 0x8000:
                old = i
            elif age < HISTORY_SPAN:
                break
        if old >= 0:
            _, layer, seq_off, ts_off = history[old]
            history[: old + 1] = [((last - HISTORY_SPAN + 1) & 0xFFFF, layer, seq_off, ts_off)]

    def resent_recently(self, out_seq: int, now: float) -> bool:
        """`out_seq` was resent within the last round trip (the answer is on its way)."""
        answered = self.answered
        if answered is None:
            return False
        entry = answered[out_seq & (CACHE_SIZE - 1)]
        lo, hi = RESEND_WINDOW_S
        window = min(hi, max(lo, RESEND_RTT_SHARE * (self.rtt_s or RTT_DEFAULT_S)))
        return entry is not None and entry[0] == out_seq and now - entry[1] < window

    def mark_resent(self, out_seq: int, now: float) -> None:
        answered = self.answered
        if answered is None:
            answered = self.answered = [None] * CACHE_SIZE
        answered[out_seq & (CACHE_SIZE - 1)] = (out_seq, now)


class NackStats:
    """What one viewer's NACKs asked for and what became of each sequence number."""

    __slots__ = ("answered", "not_cached", "over_budget", "over_limit", "repeated", "requested")

    def __init__(self) -> None:
        self.requested = 0
        self.answered = 0
        self.not_cached = 0  # not sent, too old, our padding, or out of the cache
        self.repeated = 0  # already resent within the last round trip
        self.over_budget = 0  # the viewer's 1 s retransmission budget was spent
        self.over_limit = 0  # past NACK_MAX in one datagram

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def add(self, other: NackStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
