"""One viewer's adaptive quality: estimator + layer policy + prober (pure, clock injected).

The SFU worker owns one `ViewerAbr` per viewer that negotiated transport-wide CC and
drives it from its timers, never from the per-packet path:
- `on_feedback` / `on_receiver_report` / `on_nack` as RTCP arrives;
- `padding_bytes(now, media_bytes, dt)` every tick (100 ms): how many padding bytes to
  send now, non-zero only while a probe runs;
- `decide(now, layer_bitrates)` every DECIDE_S: the target layer (or PAUSED) and tier.

Probing: the estimate only rises on evidence (see estimator), and a viewer's media
never exceeds its layer's rate, so the headroom for the next layer (or for the high
tier) is unknowable without sending more. A probe pads the viewer's stream up to a
target rate for PROBE_S, ramping the padding up from nothing so that an over-use is
seen soon after the rate crosses the bottleneck's (a small queue, not a burst's);
if no standing queue builds, the delivered rate raises the
estimate; if one does, the probe stops at once and the estimate falls to the
bottleneck's rate, and the next probe waits 1.5 times as long (up to 12 s). A probe
does not start while a queue stands. For 15 s after a downgrade the probes aim straight
at the estimate from before it (the link may simply come back), as GCC's fast
recovery does, instead of doubling from the lowered estimate, and do not back off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tchat.abr.estimator import BandwidthEstimator, PacketFeedback
from tchat.abr.policy import PAUSED, Decision, LayerPolicy, PolicyConfig, TierBudget, tier_for

DECIDE_S = 0.5
PROBE_S = 3.0
PROBE_RAMP_S = 2.0  # padding ramps up over this, then holds the target (1 s window)
PROBE_BACKOFF = 1.5  # the interval grows by this after each failed probe …
PROBE_MAX_INTERVAL_S = 12.0  # … up to this
RECOVER_WITHIN_S = 15.0  # after a downgrade: probe back to the old estimate, no backoff
FIRST_PROBE_S = 1.5  # a new viewer's first probe waits for this much evidence
NEXT_AFTER_SUCCESS_S = 1.0  # a probe that found headroom is followed up quickly
PROBE_DONE = 0.95  # an estimate this close to a probe's target counts as reaching it
HIGH_TIER_PROBE_BPS = 2_300_000  # a little above the 2 Mbps high-tier boundary
LOSS_IGNORE_AFTER_PROBE_S = 1.0
PROBE_FLOOR_S = 5.0  # after a failed probe, what the media got through before it still counts


@dataclass(frozen=True, slots=True)
class AbrConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    initial_bps: float = 1_000_000.0
    probe_interval_s: float = 3.0
    probe_max_bps: float = 4_000_000.0


class ViewerAbr:
    def __init__(self, config: AbrConfig, start_layer: int = 1, now: float = 0.0) -> None:
        self.config = config
        self.estimator = BandwidthEstimator(initial_bps=config.initial_bps)
        self.start_layer = start_layer
        self.policy: LayerPolicy | None = None  # made when the layers' rates are known
        self.tier: TierBudget = tier_for(config.initial_bps)
        self.layer = start_layer
        self.probe_target = 0.0
        self.probe_until = -1.0
        self.probe_ended = -1e9
        self.probe_next = now + FIRST_PROBE_S
        self.probe_interval = config.probe_interval_s
        self.probes = 0
        self.failed_probes = 0
        self.measured = False  # a probe has ended: the estimate rests on evidence
        self.probe_floor = 0.0  # delivered rate (no queue) just before the last probe
        self.probe_failed_at = -1e9
        self.recover_bps = 0.0  # the estimate before the last downgrade
        self.recover_until = -1.0
        self._nacked = 0
        self._sent = 0

    # --- feedback -------------------------------------------------------------------------
    def on_feedback(self, now: float, packets: list[PacketFeedback]) -> None:
        self.estimator.on_twcc(now, packets)
        if self.probing(now) and self.estimator.overusing:
            self._end_probe(now, failed=True)

    def on_receiver_report(self, now: float, fraction_lost: float) -> None:
        self.estimator.on_receiver_report(now, fraction_lost)

    def on_nack(self, count: int) -> None:
        self._nacked += count

    def on_sent(self, packets: int) -> None:
        self._sent += packets

    # --- per tick ----------------------------------------------------------------------
    def probing(self, now: float) -> bool:
        return now < self.probe_until

    def padding_bytes(self, now: float, media_bytes: int, dt: float) -> int:
        """Bytes of padding to send now so media + padding run at the probe's rate."""
        if self.probing(now) and self.estimator.estimate(now) >= PROBE_DONE * self.probe_target:
            self._end_probe(now, failed=False)  # the link carried the target: done early
        if not self.probing(now):
            if self.probe_until > 0 and self.probe_ended < self.probe_until:
                self._end_probe(now, failed=False)
            return 0
        media_bps = 8 * media_bytes / dt if dt > 0 else 0.0
        ramp = min(1.0, (now - (self.probe_until - PROBE_S)) / PROBE_RAMP_S)
        pad_bps = max(0.0, self.probe_target - media_bps) * ramp
        return int(pad_bps * dt / 8)

    def _end_probe(self, now: float, failed: bool) -> None:
        self.probe_until = min(self.probe_until, now)
        self.probe_ended = now
        self.measured = True
        if failed:
            self.failed_probes += 1
            self.probe_failed_at = now
            if now >= self.recover_until:  # right after a downgrade, keep looking
                self.probe_interval = min(self.probe_interval * PROBE_BACKOFF, PROBE_MAX_INTERVAL_S)
            self.probe_next = now + self.probe_interval
        else:
            self.probe_interval = self.config.probe_interval_s
            self.probe_next = now + NEXT_AFTER_SUCCESS_S

    # --- per DECIDE_S ---------------------------------------------------------------------
    def decide(self, now: float, layer_bitrates: list[float]) -> Decision | None:
        """The target layer for these layer rates (lowest first); None before any layer."""
        if not layer_bitrates:
            return None
        rates: list[float] = []
        for r in layer_bitrates:  # lowest first and increasing, whatever was measured
            rates.append(max(r, rates[-1] + 1 if rates else 1.0))
        if self.policy is None or len(self.policy.bitrates) != len(rates):
            start = min(self.start_layer, len(rates) - 1)
            self.policy = LayerPolicy(rates, self.config.policy, start_layer=start)
        self.policy.bitrates = rates
        if self._sent:
            self.estimator.on_nack(now, self._nacked, self._sent)
            self._nacked = self._sent = 0
        est = self.estimator.estimate(now)
        if now - self.probe_failed_at < PROBE_FLOOR_S:
            # a failed probe measured the bottleneck with the probe's own queue on it; the
            # layer that flowed without a queue before the probe is still carried, and a
            # probe must not cost the viewer its layer (a real shortfall persists)
            est = max(est, self.probe_floor)
        loss = self.estimator.loss
        if now - max(self.probe_until, self.probe_ended) < LOSS_IGNORE_AFTER_PROBE_S:
            loss = 0.0  # a probe's own losses say nothing about the media's layer
        decision = self.policy.update(now, est, loss)
        if decision.changed and decision.layer < self.layer:
            # find out soon whether the link comes back, and aim at where it was
            self.probe_next = min(self.probe_next, now + self.config.probe_interval_s)
            self.probe_interval = self.config.probe_interval_s
            self.recover_bps = self.estimator.estimate_before_overuse
            self.recover_until = now + RECOVER_WITHIN_S
        self.layer = decision.layer
        self.tier = decision.tier
        self._maybe_probe(now, est, rates)
        return decision

    def _maybe_probe(self, now: float, est: float, rates: list[float]) -> None:
        if self.probing(now) or now < self.probe_next or self.estimator.overusing:
            return
        queue = self.estimator.queue_delay_ms()
        if queue is not None and queue > 5.0:
            return  # still draining a queue: a probe now would only add to it
        assert self.policy is not None
        nxt = 0 if self.layer == PAUSED else self.layer + 1
        need = float(HIGH_TIER_PROBE_BPS)
        if nxt < len(rates):
            need = max(need, rates[nxt] * self.config.policy.headroom * 1.1)
        if est >= PROBE_DONE * need:
            return
        base = est
        if not self.measured:
            # the initial estimate is a guess: probe from what was actually delivered
            base = min(est, self.estimator.delivered_bps() or est)
        target = 2.0 * base
        if now < self.recover_until:
            target = max(target, self.recover_bps)
        self.probe_target = min(need, target, self.config.probe_max_bps)
        self.probe_until = now + PROBE_S
        self.probe_floor = self.estimator.delivered_bps() or 0.0
        self.probes += 1
