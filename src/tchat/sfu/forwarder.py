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
NACK_MAX = 64  # retransmissions per NACK message
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
        received = self.packets - prev_packets
        lost = max(0, delta - received)
        self.lost += lost
        self._rr = (ext, self.packets)
        fraction = min(255, (lost << 8) // delta) if delta else 0
        dlsr = int((now - self.sr_arrival) * 65536) if self.sr_ntp_mid else 0
        return fraction, self.lost, ext & 0xFFFFFFFF, self.sr_ntp_mid, dlsr


class DownTrack:
    """One viewer's outbound stream of one track, and its rewrite state."""

    __slots__ = (
        "abr_layer",
        "clock_rate",
        "current",
        "ext_head",
        "ext_tail",
        "fraction_lost",
        "jitter",
        "last_seq",
        "last_time",
        "last_ts",
        "manual",
        "max_layer",
        "octets",
        "packets",
        "protect",
        "pt",
        "rr_lost",
        "send",
        "seq_offset",
        "ssrc",
        "switch_seq",
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
        self.switch_seq = first_seq  # first sequence number sent from `current`
        self.switches = 0
        self.packets = 0
        self.octets = 0
        self.fraction_lost = 0
        self.rr_lost = 0
        self.jitter = 0
        self.abr_layer = HIGH  # the adaptive policy's target; PAUSED (-1) pauses
        # the owner picks the layer (switch_at_keyframe); the per-second retarget leaves it
        self.manual = False
        self.tw: TwccSender | None = None
        self.ext_head = (0, 0)  # (extension words, TWCC id byte) when tw is set
        self.ext_tail = b""  # extension elements after the TWCC one, padded

    def enable_twcc(self, tw: TwccSender, twcc_id: int) -> None:
        """Stamp transport-wide sequence numbers from now on (playout delay once set)."""
        self.tw = tw
        self.set_playout_delay(0, 0, 0)
        self.ext_head = (self.ext_head[0], (twcc_id << 4) | 1)

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

    def packet(self, marker_pt: int, seq: int, ts: int, payload: bytes, now: float) -> bytes:
        """One outgoing packet (not the hot path's inlined copy: NACK answers, padding)."""
        tw = self.tw
        if tw is None:
            return _PACK(0x80, marker_pt, seq, ts, self.ssrc) + payload
        s = tw.seq
        tw.seq = (s + 1) & 0xFFFF
        words, idb = self.ext_head
        pkt = _PACK_TW(0x90, marker_pt, seq, ts, self.ssrc, 0xBEDE, words, idb, s)
        pkt += self.ext_tail + payload
        tw.sent[s & (TWCC_RING - 1)] = (s, now, len(pkt))
        return pkt

    def pad(self, nbytes: int, now: float) -> int:
        """Send padding-only packets (a bandwidth probe) totalling about `nbytes`.

        They take sequence numbers of this stream, as browsers' padding does: the
        offset moves on, and NACKs for packets sent before are no longer answered
        (the cache's numbering no longer maps to them)."""
        if self.last_time < 0 or nbytes <= 0:
            return 0
        sent = 0
        while sent < nbytes:
            size = min(PAD_MAX, max(1, nbytes - sent))
            seq = (self.last_seq + 1) & 0xFFFF
            body = bytes(size - 1) + bytes([size])
            pkt = self.packet(self.pt, seq, self.last_ts, body, now)
            self.send(self.protect(bytes([pkt[0] | 0x20]) + pkt[1:]))
            self.last_seq = seq
            self.seq_offset = (self.seq_offset + 1) & 0xFFFF
            self.switch_seq = (seq + 1) & 0xFFFF
            sent += len(pkt)
        return sent

    def switch_to(self, layer: int, seq: int, ts: int, now: float) -> None:
        """Re-base offsets so this packet follows the last one sent."""
        out_seq = (self.last_seq + 1) & 0xFFFF
        if self.last_time < 0:
            out_ts = self.last_ts
        else:
            # the new layer's clock is unrelated: advance by the wall time elapsed
            out_ts = self.last_ts + max(1, int((now - self.last_time) * self.clock_rate))
        self.seq_offset = (out_seq - seq) & 0xFFFF
        self.ts_offset = (out_ts - ts) & 0xFFFFFFFF
        self.switch_seq = out_seq
        self.current = layer
        self.switches += 1


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
        # told (layer index, sequence number) of each padding-only packet dropped: the
        # recorder sink keeps FFmpeg's numbering free of the holes they leave
        self.padding_listeners: list[Callable[[int, int], None]] = []

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
        if start >= end:  # padding-only bandwidth probe: nothing to forward
            for listener in self.padding_listeners:
                listener(layer.index, (data[2] << 8) | data[3])
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
                dt.switch_to(index, seq, ts, now)
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

    # -- per viewer feedback ---------------------------------------------------------
    def nack(self, dt: DownTrack, lost: list[int], now: float = 0.0) -> int:
        """Resend what a viewer reports lost from the current layer's cache."""
        if dt.current < 0:
            return 0
        layer = self.layers[dt.current]
        if layer is None:
            return 0
        sent = 0
        for out_seq in lost[:NACK_MAX]:
            out_seq &= 0xFFFF
            # sent before the last switch: another layer's numbering, not cached here
            if (out_seq - dt.switch_seq) & 0xFFFF >= 0x8000:
                continue
            if (dt.last_seq - out_seq) & 0xFFFF >= 0x8000:
                continue  # not sent yet
            entry = layer.cache.get((out_seq - dt.seq_offset) & 0xFFFF)
            if entry is None:
                continue
            _, ts, marker, payload = entry
            out_ts = (ts + dt.ts_offset) & 0xFFFFFFFF
            dt.send(dt.protect(dt.packet(marker | dt.pt, out_seq, out_ts, payload, now)))
            sent += 1
        return sent

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
