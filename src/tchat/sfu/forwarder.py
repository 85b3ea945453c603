"""The hot path: one published packet in, one rewritten packet out per viewer.

Per packet (`Track.forward`): find the layer by SSRC, cache the payload for NACKs,
and for each `DownTrack` either drop it (other layer, or waiting for a keyframe on
the target layer) or rewrite SSRC/PT/sequence/timestamp, protect and send. The
rewrite keeps each viewer's sequence and timestamp continuous across layer
switches: on a switch the offsets are re-based so the first packet of the new
layer follows the last one sent.

With transport-wide CC negotiated, every packet to a viewer also carries the
viewer's transport-wide sequence number (one-byte header extension, plus the
playout-delay extension with the viewer's latency tier) and its send time and
size are kept in the viewer's `TwccSender` ring for the feedback to match.

Sequence numbers a viewer sees are its own: the publisher's padding-only packets
(browsers' bandwidth probes) are not forwarded and close up behind them, and our own
probe padding goes on the viewer's RTX stream when it negotiated one (else on the
media stream, only between frames, as libwebrtc does). Each change of the rewrite
(layer switch, padding) opens a `Segment`, so a NACK for any packet still cached maps
back to the layer and sequence number it came from.

NACK answers are bounded per viewer (`RetransmitBudget`: retransmitted bytes in any
1 s ≤ the viewer's delivered rate), per RTCP datagram (`NACK_MAX` packets) and per
sequence number (answered at most once per round-trip time).

Per second (`Track.tick`) only sets targets: which layer each viewer should get
and which keyframes to ask the publisher for (rate-limited). Nothing here does I/O
or reads a clock: `protect`/`send`/`request_keyframe` are injected and `now` is
passed in, so unit tests drive it with plain lists and numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct

from tchat.sfu.rtp import HEADER, header_extension, keyframe_detector, payload_bounds

_PACK = Struct("!BBHII").pack
# header with a one-byte extension block whose first element is the TWCC sequence number
_PACK_TW = Struct("!BBHIIHHBH").pack
TWCC_RING = 4096  # sent packets remembered per viewer for feedback (~10 s at 400 pkt/s)
PAD_MAX = 255  # RTP padding is at most 255 bytes per packet
RTP_OVERHEAD = 20  # header + TWCC/playout extension bytes per packet sent to a viewer
CACHE_SIZE = 1024  # packets per layer kept for NACKs (~2-3 s of 720p)
PLI_INTERVAL_S = 0.5  # at most one keyframe request per layer this often
LAYER_STALE_S = 1.5  # a layer silent this long is not offered to viewers
NACK_MAX = 64  # retransmissions per RTCP datagram (all its NACK items together)
# rewrite segments kept per viewer track (layer switches, padding bursts): padding without
# RTX opens two every 20 ms while a probe runs, so this covers ≥ 5 s (the cache: ~2.5 s)
HISTORY = 512
HISTORY_SPAN = 0x2000  # packets: older ones are past every cache; re-anchored per second
RTX_OSN = 2  # an RTX payload starts with the original sequence number (RFC 4588)
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

    def lookup(self, seq: int) -> tuple[float, int] | None:
        """(send time, size) of transport-wide sequence number `seq`, if still known."""
        entry = self.sent[seq & (TWCC_RING - 1)]
        return (entry[1], entry[2]) if entry is not None and entry[0] == seq else None


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
        tw.sent[s & (TWCC_RING - 1)] = (s, now, len(pkt))
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


class Track:
    """One published media (audio, or video with up to three simulcast layers)."""

    def __init__(
        self,
        kind: str,
        mime: str,
        clock_rate: int,
        rids: list[str] | None = None,
        rid_ext: int = 0,
        request_keyframe: Callable[[int], None] | None = None,
    ) -> None:
        self.kind = kind
        self.mime = mime
        self.clock_rate = clock_rate
        self.rids = list(rids or [])
        self.rid_ext = rid_ext
        self.is_keyframe_start = keyframe_detector(mime)
        self.layers: list[Layer | None] = [None] * max(1, len(self.rids))
        self.by_ssrc: dict[int, Layer] = {}
        self.downtracks: list[DownTrack] = []
        self.request_keyframe = request_keyframe or (lambda ssrc: None)
        self._pli_at: dict[int, float] = {}
        self.dropped = 0  # packets of unknown layers, malformed, or padding-only
        self.delivered = 0
        # cluster relay sinks (sfu/relay.py): each gets (layer index, the packet as received)
        self.relays: list[Callable[[int, bytes], None]] = []

    # -- per packet ------------------------------------------------------------
    def forward(self, data: bytes, now: float, index_hint: int = -1) -> int:
        """Forward one unprotected RTP packet to every viewer; returns packets sent.

        `index_hint` names the layer of a new SSRC when the packet comes from a cluster
        relay (the origin already mapped rid → layer)."""
        start, end = payload_bounds(data)  # raises RtpError on a truncated packet
        ssrc = HEADER.unpack_from(data)[4]
        layer = self.by_ssrc.get(ssrc)
        if layer is None:
            layer = self._bind(data, ssrc, now, index_hint)
            if layer is None:
                self.dropped += 1
                return 0
        if start >= end:  # padding-only (the publisher's bandwidth probe): not forwarded
            self._skip(layer, (data[2] << 8) | data[3])
            if self.relays:
                # edges close up behind it too: its number, in a 13-byte padding stub
                stub = b"\xa0" + data[1:12] + b"\x01"
                for relay in self.relays:
                    relay(layer.index, stub)
            return 0
        payload = data[start:end]
        seq = (data[2] << 8) | data[3]
        ts = (data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7]
        marker = data[1] & 0x80
        layer.cache.put(seq, ts, marker, payload)
        layer.last_seen = now
        layer.packets += 1
        layer.octets += end - start
        if (seq - layer.max_seq) & 0xFFFF < 0x8000:
            layer.max_seq = seq
        index = layer.index
        for relay in self.relays:
            relay(index, data)
        keyframe = -1
        sent = 0
        for dt in self.downtracks:
            if dt.current != index:
                if dt.target != index:
                    continue
                if keyframe < 0:
                    keyframe = 1 if self.is_keyframe_start(payload) else 0
                if not keyframe:
                    continue
                dt.switch_to(layer, seq, ts, now)
            out_seq = (seq + dt.seq_offset) & 0xFFFF
            out_ts = (ts + dt.ts_offset) & 0xFFFFFFFF
            tw = dt.tw
            if tw is None:
                dt.send(dt.protect(_PACK(0x80, marker | dt.pt, out_seq, out_ts, dt.ssrc) + payload))
            else:
                s = tw.seq
                tw.seq = (s + 1) & 0xFFFF
                words, idb = dt.ext_head
                mpt = marker | dt.pt
                pkt = _PACK_TW(0x90, mpt, out_seq, out_ts, dt.ssrc, 0xBEDE, words, idb, s)
                pkt += dt.ext_tail + payload
                tw.sent[s & (TWCC_RING - 1)] = (s, now, len(pkt))
                dt.send(dt.protect(pkt))
            if (out_seq - dt.last_seq) & 0xFFFF < 0x8000:
                dt.last_seq = out_seq
                dt.last_ts = out_ts
                dt.last_time = now
            dt.packets += 1
            dt.octets += end - start
            if marker:
                dt.frames += 1
            sent += 1
        self.delivered += sent
        return sent

    def _bind(self, data: bytes, ssrc: int, now: float, hint: int = -1) -> Layer | None:
        """Map a new SSRC to its layer: by rid when simulcast, else it replaces layer 0."""
        if 0 <= hint < len(self.layers):
            index = hint
        elif self.rids:
            rid = header_extension(data, self.rid_ext)
            if rid is None:
                return None
            try:
                index = self.rids.index(rid.decode("ascii", "replace"))
            except ValueError:
                return None
        else:
            index = 0
        old = self.layers[index]
        if old is not None:
            # the publisher restarted this stream: its numbering starts over, so viewers
            # on it re-base (on the next keyframe) instead of jumping
            self.by_ssrc.pop(old.ssrc, None)
            self._pli_at.pop(index, None)  # the limit was for the old stream
            for dt in self.downtracks:
                if dt.current == index:
                    dt.current = -1
        layer = Layer(index, ssrc)
        layer.first_packet((data[2] << 8) | data[3])
        self.layers[index] = layer
        self.by_ssrc[ssrc] = layer
        layer.last_seen = now
        self.tick(now)  # let waiting viewers target the new layer at once
        return layer

    def _skip(self, layer: Layer, seq: int) -> None:
        """A padding-only packet: counted as received; viewers on the layer close up."""
        layer.padding += 1
        if not 0 < (seq - layer.max_seq) & 0xFFFF < 0x8000:
            return  # old or repeated: its number is already behind every viewer
        layer.max_seq = seq
        for dt in self.downtracks:
            if dt.current == layer.index:
                dt.skip()

    # -- per viewer feedback ---------------------------------------------------------
    def nack(
        self,
        dt: DownTrack,
        lost: list[int],
        now: float = 0.0,
        budget: RetransmitBudget | None = None,
        limit: int = NACK_MAX,
    ) -> int:
        """Resend what a viewer reports lost, from the cache of the layer each packet came
        from: as RTX (original sequence number first) when negotiated. At most `limit`
        packets, within `budget`, each sequence number at most once per round trip.
        Returns packets resent; `dt.nack_stats` says what became of each number."""
        stats = dt.nack_stats
        stats.requested += len(lost)
        sent = 0
        rtx = dt.rtx_ssrc
        header = dt.header_size() + (RTX_OSN if rtx else 0)
        for i, out_seq in enumerate(lost):
            if sent >= limit:
                stats.over_limit += len(lost) - i
                break
            out_seq &= 0xFFFF
            seg = dt.segment_of(out_seq)
            if seg is None:
                stats.not_cached += 1
                continue
            layer = seg[1]
            if layer is None:
                # our padding (no RTX): a one-byte padding packet fills the viewer's gap,
                # else its frame continuity waits for it until the next keyframe
                ts, marker, payload = seg[3], 0, b""
            else:
                entry = layer.cache.get((out_seq - seg[2]) & 0xFFFF)
                if entry is None:
                    stats.not_cached += 1
                    continue
                _, ts, marker, payload = entry
                ts = (ts + seg[3]) & 0xFFFFFFFF
            if dt.resent_recently(out_seq, now):
                stats.repeated += 1
                continue
            if budget is not None and not budget.allow(header + len(payload) + 1, now):
                stats.over_budget += len(lost) - i
                break
            dt.mark_resent(out_seq, now)
            if rtx:
                seq = dt.rtx_seq
                dt.rtx_seq = (seq + 1) & 0xFFFF
                body = out_seq.to_bytes(2, "big") + payload
                pkt = dt.packet(marker | dt.rtx_pt, seq, ts, body, now, rtx)
            elif payload:
                pkt = dt.packet(marker | dt.pt, out_seq, ts, payload, now)
            else:
                pkt = dt.packet(dt.pt, out_seq, ts, b"\x01", now)
                pkt = bytes([pkt[0] | 0x20]) + pkt[1:]
            dt.send(dt.protect(pkt))
            dt.rtx_octets += len(pkt)
            sent += 1
        stats.answered += sent
        return sent

    def pad(self, dt: DownTrack, nbytes: int, now: float) -> int:
        """Probe padding for one viewer; on the media stream only at a frame boundary
        (the last packet sent ends a frame, or was padding), else nothing this time."""
        if not dt.rtx_ssrc and not self.frame_done(dt):
            return 0
        return dt.pad(nbytes, now)

    def frame_done(self, dt: DownTrack) -> bool:
        """The last packet sent to the viewer carried the marker bit (or was padding)."""
        if dt.last_time < 0:
            return False
        seg = dt.segment_of(dt.last_seq)
        if seg is None:
            return False
        if seg[1] is None:
            return True  # padding already went out here
        entry = seg[1].cache.get((dt.last_seq - seg[2]) & 0xFFFF)
        return entry is not None and bool(entry[2])

    def keyframe_wanted(self, dt: DownTrack, now: float) -> None:
        """A viewer asked for a keyframe (PLI/FIR): ask the publisher, rate-limited."""
        index = dt.current if dt.current >= 0 else dt.target
        if index >= 0:
            self._pli(index, now)

    def request_layer_keyframe(self, index: int, now: float) -> None:
        """A relay edge needs a keyframe of this layer (rate-limited like viewers' PLIs)."""
        if 0 <= index < len(self.layers):
            self._pli(index, now)

    # -- per second / membership ---------------------------------------------------
    def add(self, dt: DownTrack, now: float) -> None:
        self.downtracks.append(dt)
        self._retarget(dt, now)

    def remove(self, dt: DownTrack) -> None:
        if dt in self.downtracks:
            self.downtracks.remove(dt)

    def switch_at_keyframe(self, dt: DownTrack, layer: int, now: float) -> None:
        """Forward nothing more to `dt` until `layer`'s next keyframe, then go on from it
        (-1: nothing until told otherwise). From then on the owner alone chooses dt's
        layer: the recorder changes layers only where its segments can cut."""
        dt.manual = True
        dt.target = layer
        dt.current = -1
        if layer >= 0:
            self._pli(layer, now)

    def set_max_layer(self, dt: DownTrack, max_layer: int, now: float) -> None:
        dt.max_layer = max_layer
        self._retarget(dt, now)

    def set_abr_layer(self, dt: DownTrack, layer: int, now: float) -> None:
        """The adaptive policy's target (PAUSED = -1); the user's cap still applies."""
        if dt.abr_layer != layer:
            dt.abr_layer = layer
            self._retarget(dt, now)

    def layer_bitrates(self) -> list[float]:
        """Measured RTP rate of each received layer, lowest first (unknown: skipped)."""
        return [rate for _, rate in self.layer_rates()]

    def layer_rates(self) -> list[tuple[int, float]]:
        """(layer index, measured RTP rate) of each received layer, lowest first: the
        indices need not be 0…n-1 (an edge receives only the layers it demands)."""
        return [
            (layer.index, layer.rate_bps)
            for layer in self.layers
            if layer is not None and layer.rate_bps
        ]

    def tick(self, now: float) -> None:
        for layer in self.layers:
            if layer is not None:
                layer.measure(now)
        for dt in self.downtracks:
            dt.reanchor()
            self._retarget(dt, now)

    def available(self, now: float) -> list[int]:
        return [
            layer.index
            for layer in self.layers
            if layer is not None and now - layer.last_seen <= LAYER_STALE_S
        ]

    def _retarget(self, dt: DownTrack, now: float) -> None:
        if dt.manual:
            return
        live = self.available(now)
        if not live:
            return
        cap = min(dt.max_layer, dt.abr_layer)
        if cap < 0:  # paused by the adaptive policy: nothing until it resumes
            dt.target = dt.current = -1
            return
        under = [i for i in live if i <= cap]
        dt.target = max(under) if under else min(live)
        if dt.current != dt.target:
            self._pli(dt.target, now)

    def _pli(self, index: int, now: float) -> None:
        layer = self.layers[index]
        if layer is None or self.kind != "video":
            return
        if now - self._pli_at.get(index, -1e9) >= PLI_INTERVAL_S:
            self._pli_at[index] = now
            self.request_keyframe(layer.ssrc)
