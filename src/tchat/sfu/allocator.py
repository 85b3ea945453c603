"""Per-viewer quality: which layer each adaptive viewer gets, its probes and its tier.

The stream allocator is the SFU's per-second policy, apart from the per-packet path (as
LiveKit keeps its `StreamAllocator` apart from the `Forwarder`). A viewer that negotiated
transport-wide CC is *adaptive*: the allocator gives its downtracks a `TwccSender`, feeds
its RTCP (TWCC feedback, receiver reports, NACK counts) to its `ViewerAbr`, and on its
timer sets the video layer (`Track.set_abr_layer`), the probe padding and the playout
delay of the tier. It sends nothing itself and reads no clock: `now` comes with every
call. The forwarder and the worker's datagram path never import `tchat.abr`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tchat.abr.controller import DECIDE_S, AbrConfig, ViewerAbr
from tchat.abr.estimator import PacketFeedback
from tchat.abr.policy import PolicyConfig
from tchat.sfu import sdp, twcc
from tchat.sfu.forwarder import DownTrack, Track, TwccSender
from tchat.sfu.settings import SfuSettings

if TYPE_CHECKING:
    from tchat.sfu.peer import Peer


@dataclass(eq=False)
class Adaptive:
    """One adaptive viewer's quality state."""

    abr: ViewerAbr
    twcc: TwccSender
    video: tuple[Track, DownTrack] | None = None
    playout_ext: int = 0
    octets: int = 0  # media payload bytes sent, at the previous tick
    packets: int = 0  # video packets sent, at the previous decision
    tick: float = 0.0


def abr_config(settings: SfuSettings) -> AbrConfig:
    return AbrConfig(
        policy=PolicyConfig(
            up_after_s=settings.abr_up_after_s,
            no_up_after_down_s=settings.abr_hold_after_down_s,
            headroom=settings.abr_headroom,
        ),
        initial_bps=settings.abr_initial_bps,
        probe_interval_s=settings.abr_probe_interval_s,
        probe_max_bps=settings.abr_probe_max_bps,
    )


class StreamAllocator:
    def __init__(self, config: AbrConfig) -> None:
        self.config = config
        self.viewers: dict[Peer, Adaptive] = {}  # every viewer that negotiated TWCC
        self.active: dict[Peer, Adaptive] = {}  # those with a video downtrack to steer
        self.probing = False  # some viewer's probe is padding: the timer paces finer
        self._last_decide = 0.0

    def is_adaptive(self, peer: Peer) -> bool:
        return peer in self.viewers

    # -- a viewer's life -----------------------------------------------------------------
    def connect(
        self, peer: Peer, pairs: Iterable[tuple[sdp.Media, Track, DownTrack]], now: float
    ) -> None:
        """A viewer's downtracks exist, not yet added to their tracks: wire the adaptive
        ones (a TWCC sequence across them, the video's starting layer and playout delay)."""
        if not any(m.twcc_ext for m in peer.media):
            return
        pairs = list(pairs)
        first = next((dt for m, _, dt in pairs if m.twcc_ext), None)
        tw = first.new_twcc() if first is not None else TwccSender()  # native or not
        state = Adaptive(ViewerAbr(self.config, min(1, peer.max_layer), now), tw)
        state.tick = now
        self.viewers[peer] = state
        wired: list[DownTrack] = []
        for m, track, dt in pairs:
            if not m.twcc_ext:
                continue
            dt.enable_twcc(state.twcc, m.twcc_ext)
            wired.append(dt)
            if m.kind == "video":
                state.video = (track, dt)
                state.playout_ext = m.playout_ext
                dt.abr_layer = state.abr.layer
                _set_playout(state, wired)
        if state.video is not None:
            self.active[peer] = state

    def remove(self, peer: Peer) -> None:
        self.viewers.pop(peer, None)
        self.active.pop(peer, None)

    # -- RTCP from a viewer ----------------------------------------------------------------
    def on_rtcp(self, peer: Peer, plain: bytes, now: float) -> bool:
        """Transport-wide CC feedback → the viewer's estimator (send times from our ring).
        False when the feedback is malformed (the caller counts it)."""
        state = self.viewers.get(peer)
        if state is None:
            return True
        try:
            reports = twcc.find_feedback(plain)
        except ValueError:
            return False
        lookup = state.twcc.lookup
        for fb in reports:
            packets = []
            for seq, arrival in fb.arrivals:
                sent = lookup(seq)
                if sent is not None:
                    packets.append(PacketFeedback(sent[0], arrival, sent[1]))
            if packets:
                state.abr.on_feedback(now, packets)
        return True

    def on_receiver_report(
        self, peer: Peer, pair: tuple[Track, DownTrack], now: float, fraction_lost: int
    ) -> None:
        state = self.viewers.get(peer)
        if state is not None and pair is state.video:
            state.abr.on_receiver_report(now, fraction_lost / 256)

    def on_nack(self, peer: Peer, pair: tuple[Track, DownTrack], lost: int) -> None:
        state = self.viewers.get(peer)
        if state is not None and pair is state.video:
            state.abr.on_nack(lost)

    # -- timers ------------------------------------------------------------------------
    def pad(self, now: float) -> None:
        """Probe padding for every adaptive viewer (media + padding at the probe's rate)."""
        probing = False
        for peer, state in self.active.items():
            assert state.video is not None
            octets = sum(d.octets for _, d in peer.downtracks.values())
            media, state.octets = octets - state.octets, octets
            pad = state.abr.padding_bytes(now, media, now - state.tick)
            state.tick = now
            if pad:
                state.video[0].pad(state.video[1], pad, now)
            probing = probing or state.abr.probing(now)
        self.probing = probing

    def tick(self, now: float) -> None:
        """Per tick: probe padding; every DECIDE_S (every tick while a viewer's queue
        builds): each adaptive viewer's layer and tier."""
        if not self.active:
            return
        self.pad(now)
        due = now - self._last_decide >= DECIDE_S
        if due:
            self._last_decide = now
        for peer, state in self.active.items():
            abr, video = state.abr, state.video
            assert video is not None
            if not due and not abr.estimator.overusing:
                continue  # a queue is building: decide now, not at the next 0.5 s
            track, dt = video
            abr.on_sent(dt.packets - state.packets)
            state.packets = dt.packets
            tier = abr.tier
            # what the viewer's link carries on each layer: the video layer and the audio
            audio = peer.room.tracks.get("audio")
            extra = sum(audio.layer_bitrates()[:1]) if audio is not None else 0.0
            rates = track.layer_rates()
            decision = abr.decide(now, [rate + extra for _, rate in rates])
            if decision is None:
                continue
            # the policy counts the layers it was given; the forwarder wants their indices
            layer = rates[decision.layer][0] if 0 <= decision.layer < len(rates) else decision.layer
            track.set_abr_layer(dt, layer, now)
            if decision.tier is not tier:
                _set_playout(state, (d for _, d in peer.downtracks.values()))
            self.probing = self.probing or abr.probing(now)

    # -- figures -----------------------------------------------------------------------
    def viewer_stats(self, peer: Peer, now: float) -> dict[str, object]:
        """One adaptive viewer: estimate, layer, tier and switches (times on our clock)."""
        state = self.active[peer]
        abr = state.abr
        assert state.video is not None
        dt = state.video[1]
        est = abr.estimator
        switches = abr.policy.switches[-50:] if abr.policy is not None else []
        queue = est.queue_delay_ms()
        return {
            "id": peer.id,
            "addr": f"{peer.addr[0]}:{peer.addr[1]}" if peer.addr else None,
            "estimate_bps": round(est.estimate(now)),
            "delivered_bps": round(est.delivered_bps() or 0),
            "queue_ms": round(queue, 1) if queue is not None else None,
            "loss": round(est.loss, 4),
            "target_layer": abr.layer,
            "layer": dt.current,
            "user_max_layer": dt.max_layer,
            "tier": abr.tier.tier.value,
            "target_delay_ms": abr.tier.target_delay_ms,
            "switches": len(switches),
            "switch_log": [[round(t, 3), layer, why] for t, layer, why in switches],
            "probing": abr.probing(now),
            "probes": abr.probes,
            "failed_probes": abr.failed_probes,
            "frames": dt.frames,
            "padding_bytes": dt.padded,
            "publisher_padding_closed_up": dt.skipped,
            "rtx": bool(dt.rtx_ssrc),
            "rtt_ms": round(dt.rtt_s * 1000, 1) if dt.rtt_s else None,
            "nacks": peer.nacks.as_dict(),
            "retransmitted_bytes": sum(d.rtx_octets for _, d in peer.downtracks.values()),
        }


def _set_playout(state: Adaptive, downtracks: Iterable[DownTrack]) -> None:
    """Tell the viewer its tier's target delay (playout-delay extension: 0 … target)."""
    if not state.playout_ext:
        return
    for dt in downtracks:
        if dt.tw is not None:
            dt.set_playout_delay(state.playout_ext, 0, state.abr.tier.target_delay_ms)
