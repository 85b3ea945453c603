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

NACK answers (sfu/retransmit.py) are bounded per viewer (`RetransmitBudget`:
retransmitted bytes in any 1 s ≤ the viewer's delivered rate), per RTCP datagram
(`NACK_MAX` packets) and per sequence number (at most once per round-trip time).

Viewers whose `DownTrack` is native (sfu/fastpath.py) are not in this loop: one call to
the track's native `Fanout` rewrites, protects and sends to all of them at once.

Per second (`Track.tick`) only sets targets: which layer each viewer should get
and which keyframes to ask the publisher for (rate-limited). Nothing here does I/O
or reads a clock: `protect`/`send`/`request_keyframe` are injected and `now` is
passed in, so unit tests drive it with plain lists and numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tchat.sfu.downtrack import (
    _PACK,
    _PACK_TW,
    HIGH,
    LOW,
    NACK_MAX,
    TWCC_RING,
    DownTrack,
    NackStats,
    Protect,
    RetransmitBudget,
    Send,
    TwccSender,
)
from tchat.sfu.fastpath import NativeDownTrack, forward_native
from tchat.sfu.layer import CACHE_SIZE, Layer, PacketCache
from tchat.sfu.retransmit import resend
from tchat.sfu.rtp import HEADER, header_extension, keyframe_detector, payload_bounds

__all__ = [
    "CACHE_SIZE",
    "HIGH",
    "LAYER_STALE_S",
    "LOW",
    "NACK_MAX",
    "PLI_INTERVAL_S",
    "DownTrack",
    "Layer",
    "NackStats",
    "PacketCache",
    "Protect",
    "RetransmitBudget",
    "Send",
    "Track",
    "TwccSender",
]
PLI_INTERVAL_S = 0.5  # at most one keyframe request per layer this often
LAYER_STALE_S = 1.5  # a layer silent this long is not offered to viewers


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
        self.downtracks: list[DownTrack] = []  # every viewer's: the policy's list
        self._python: list[DownTrack] = []  # those this loop sends to
        self.fanout: Any = None  # the native fan-out of the others (sfu/fastpath.py)
        self.request_keyframe = request_keyframe or (lambda ssrc: None)
        self._pli_at: dict[int, float] = {}
        self.dropped = 0  # packets of unknown layers, malformed, or padding-only
        self.delivered = 0
        # cluster relay sinks (sfu/cluster/origin.py): each gets (layer index, the packet
        # as received)
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
            self._padding(layer, data)
            return 0
        payload = data[start:end]
        seq = (data[2] << 8) | data[3]
        ts = (data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7]
        marker = data[1] & 0x80
        layer.received(seq, ts, marker, payload, now)
        index = layer.index
        for relay in self.relays:
            relay(index, data)
        keyframe = -1
        fan = self.fanout
        sent = 0 if fan is None else forward_native(self, layer, marker, seq, ts, payload, now)
        for dt in self._python:
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

    def _padding(self, layer: Layer, data: bytes) -> None:
        self._skip(layer, (data[2] << 8) | data[3])
        if self.relays:
            # edges close up behind it too: its number, in a 13-byte padding stub
            stub = b"\xa0" + data[1:12] + b"\x01"
            for relay in self.relays:
                relay(layer.index, stub)

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

    def rebind(
        self, rids: list[str], rid_ext: int, request_keyframe: Callable[[int], None]
    ) -> None:
        """Another publisher takes the track over (a resume): its SSRCs and rids; each
        viewer waits for its first keyframe and numbers on from where it stopped."""
        self.rids, self.rid_ext, self.request_keyframe = list(rids), rid_ext, request_keyframe
        self.layers = [None] * max(1, len(self.rids))
        self.by_ssrc.clear()
        self._pli_at.clear()
        for dt in self.downtracks:
            dt.current = -1

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
    # what a viewer reports lost, resent (sfu/retransmit.py); packets resent
    nack = staticmethod(resend)

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
        if isinstance(dt, NativeDownTrack):
            if self.fanout is None:
                self.fanout = dt.module.Fanout()
            self.fanout.add(dt.slot)
        else:
            self._python.append(dt)
        self._retarget(dt, now)

    def remove(self, dt: DownTrack) -> None:
        if dt in self.downtracks:
            self.downtracks.remove(dt)
        if isinstance(dt, NativeDownTrack):
            self.fanout.remove(dt.slot)
        elif dt in self._python:
            self._python.remove(dt)

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
