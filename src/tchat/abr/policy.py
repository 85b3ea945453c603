"""Simulcast layer choice with hysteresis, and latency tiers (pure, clock injected).

Per second (not per packet) the SFU calls `LayerPolicy.update(now, estimate_bps, loss)`
for each viewer; the result is a *target* layer (or paused video) that the forwarder
moves to on the next keyframe of that layer.

- Down promptly: as soon as the estimate no longer carries the current layer (or loss
  exceeds `loss_down`), target the highest layer the estimate carries. Prompt means
  within one update, so well within the 2 s the guide allows.
- Up slowly: the next layer up only after `up_after_s` (5 s) of continuous headroom for
  it (estimate ≥ its bitrate × `headroom`), and never within `no_up_after_down_s` (10 s)
  of a downgrade: the guide's 5 s / 10 s hysteresis.
- Below the lowest layer: video paused (audio keeps flowing) rather than a frozen stream
  with a growing queue; resumed with the same climbing rule.

Latency tiers follow the estimate (> 2 Mbps high, 0.8–2 standard, < 0.8 constrained)
and give each viewer a target playout delay; the guide's 1 / 3 / 5 s are ceilings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

PAUSED = -1


class Tier(Enum):
    HIGH = "high"
    STANDARD = "standard"
    CONSTRAINED = "constrained"


@dataclass(frozen=True, slots=True)
class TierBudget:
    tier: Tier
    target_delay_ms: int  # what the viewer's jitter buffer aims for
    ceiling_ms: int  # the guide's latency ceiling for the tier


TIERS = (
    TierBudget(Tier.HIGH, 100, 1000),
    TierBudget(Tier.STANDARD, 200, 3000),
    TierBudget(Tier.CONSTRAINED, 400, 5000),
)


def tier_for(estimate_bps: float) -> TierBudget:
    if estimate_bps > 2_000_000:
        return TIERS[0]
    if estimate_bps >= 800_000:
        return TIERS[1]
    return TIERS[2]


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    up_after_s: float = 5.0
    no_up_after_down_s: float = 10.0
    headroom: float = 1.2  # estimate must exceed a layer's bitrate by this to climb to it
    carry: float = 1.0  # the current layer is kept while estimate ≥ bitrate × carry
    loss_down: float = 0.10


@dataclass(frozen=True, slots=True)
class Decision:
    layer: int  # target layer index, or PAUSED
    tier: TierBudget
    changed: bool
    reason: str


class LayerPolicy:
    """One viewer's layer target. `bitrates` of the layers, lowest first, in bps."""

    def __init__(
        self, bitrates: list[float], config: PolicyConfig | None = None, start_layer: int = 0
    ) -> None:
        if not bitrates or sorted(bitrates) != bitrates:
            raise ValueError("bitrates must be non-empty, lowest layer first")
        self.bitrates = bitrates
        self.config = config or PolicyConfig()
        self.layer = start_layer
        self.last_down: float | None = None
        self._headroom_since: float | None = None  # continuous headroom for layer + 1
        self.switches: list[tuple[float, int, str]] = []

    def update(self, now: float, estimate_bps: float, loss: float = 0.0) -> Decision:
        cfg = self.config
        tier = tier_for(estimate_bps)
        carried = self._highest_carried(estimate_bps, cfg.carry)
        current_ok = self.layer != PAUSED and estimate_bps >= self.bitrates[self.layer] * cfg.carry
        if self.layer != PAUSED and (not current_ok or loss > cfg.loss_down):
            target = carried if current_ok is False else max(PAUSED, min(carried, self.layer - 1))
            reason = "loss" if current_ok else "estimate below layer"
            return self._switch(now, target, tier, reason, down=True)

        nxt = 0 if self.layer == PAUSED else self.layer + 1
        if nxt >= len(self.bitrates):
            self._headroom_since = None
            return Decision(self.layer, tier, False, "top layer")
        if estimate_bps >= self.bitrates[nxt] * cfg.headroom and loss <= cfg.loss_down:
            if self._headroom_since is None:
                self._headroom_since = now
        else:
            self._headroom_since = None
            return Decision(self.layer, tier, False, "no headroom")
        if now - self._headroom_since < cfg.up_after_s:
            return Decision(self.layer, tier, False, "headroom not yet sustained")
        if self.last_down is not None and now - self.last_down < cfg.no_up_after_down_s:
            return Decision(self.layer, tier, False, "holding after downgrade")
        decision = self._switch(now, nxt, tier, "sustained headroom", down=False)
        above = nxt + 1
        if above < len(self.bitrates) and estimate_bps >= self.bitrates[above] * cfg.headroom:
            self._headroom_since = now  # the headroom for the next climb starts counting now
        return decision

    def _highest_carried(self, estimate_bps: float, factor: float) -> int:
        best = PAUSED
        for i, bitrate in enumerate(self.bitrates):
            if estimate_bps >= bitrate * factor:
                best = i
        return best

    def _switch(
        self, now: float, target: int, tier: TierBudget, reason: str, down: bool
    ) -> Decision:
        self._headroom_since = None
        if target == self.layer:
            return Decision(self.layer, tier, False, reason)
        if down:
            self.last_down = now
        self.layer = target
        self.switches.append((now, target, reason))
        return Decision(target, tier, True, reason)


def oscillations(switches: list[tuple[float, int, str]], within_s: float) -> int:
    """Direction reversals (up then down, or down then up) closer than `within_s`."""
    count = 0
    triples = zip(switches, switches[1:], switches[2:], strict=False)
    for (t0, l0, _), (_, l1, _), (t2, l2, _) in triples:
        if (l1 - l0) * (l2 - l1) < 0 and t2 - t0 < within_s:
            count += 1
    return count
