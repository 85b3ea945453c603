"""Layer policy and estimator against scripted traces (fake clock, no sockets)."""

from collections.abc import Callable

import pytest

from tchat.abr.estimator import BandwidthEstimator, PacketFeedback
from tchat.abr.policy import PAUSED, LayerPolicy, Tier, oscillations, tier_for

LAYERS = [150_000.0, 500_000.0, 1_500_000.0]


def replay(
    policy: LayerPolicy, trace: Callable[[float], float], until: float, step: float = 0.5
) -> list[tuple[float, int]]:
    """Feed the policy a bandwidth trace every `step` seconds; layer after each update."""
    out = []
    t = 0.0
    while t <= until:
        out.append((t, policy.update(t, trace(t)).layer))
        t += step
    return out


def first_time(timeline: list[tuple[float, int]], layer: int, after: float = 0.0) -> float:
    return next(t for t, lay in timeline if t >= after and lay == layer)


def test_steady_high_bandwidth_climbs_every_5s_and_stays() -> None:
    policy = LayerPolicy(LAYERS)
    timeline = replay(policy, lambda t: 3_000_000, 30)
    assert first_time(timeline, 1) == 5.0
    assert first_time(timeline, 2) == 10.0
    assert timeline[-1][1] == 2 and len(policy.switches) == 2


def test_step_down_is_prompt_then_upgrade_waits_10s() -> None:
    policy = LayerPolicy(LAYERS, start_layer=2)
    trace = lambda t: 3_000_000 if t < 20 or t >= 25 else 600_000  # noqa: E731
    timeline = replay(policy, trace, 50)
    down = first_time(timeline, 1, after=20)
    assert down == 20.0  # within one update of the drop (guide: < 2 s)
    up = first_time(timeline, 2, after=down + 0.1)
    # headroom returns at 25 s; 5 s of it by 30 s, but no climb within 10 s of the 20 s downgrade
    assert up == 30.0
    assert up - down >= 10.0
    assert oscillations(policy.switches, within_s=10) == 0


def test_step_up_climbs_one_layer_per_5s() -> None:
    policy = LayerPolicy(LAYERS)
    timeline = replay(policy, lambda t: 200_000 if t < 10 else 3_000_000, 40)
    assert first_time(timeline, 1) == 15.0
    assert first_time(timeline, 2) == 20.0


def test_sawtooth_does_not_oscillate() -> None:
    # bandwidth swings 0.4 ↔ 2.5 Mbps every 3 s: too fast to ever sustain 5 s of headroom
    policy = LayerPolicy(LAYERS, start_layer=1)
    timeline = replay(policy, lambda t: 2_500_000 if int(t / 3) % 2 else 400_000, 60)
    assert {lay for _, lay in timeline} <= {0, 1}
    assert all(lay == 0 for t, lay in timeline if t >= 1)
    assert oscillations(policy.switches, within_s=10) == 0


def test_below_lowest_layer_pauses_video_and_resumes_slowly() -> None:
    policy = LayerPolicy(LAYERS)
    timeline = replay(policy, lambda t: 80_000 if t < 10 else 300_000, 40)
    assert timeline[0][1] == PAUSED
    resumed = first_time(timeline, 0, after=10)
    assert resumed == 15.0  # 5 s of headroom from t=10 (and more than 10 s after the pause)


def test_loss_steps_down_even_when_estimate_carries() -> None:
    policy = LayerPolicy(LAYERS, start_layer=2)
    d = policy.update(0.0, 3_000_000, loss=0.25)
    assert d.changed and d.layer == 1 and d.reason == "loss"


def test_tiers() -> None:
    assert tier_for(3e6).tier is Tier.HIGH and tier_for(3e6).ceiling_ms == 1000
    assert tier_for(1.5e6).tier is Tier.STANDARD and tier_for(8e5).tier is Tier.STANDARD
    assert tier_for(6e5).tier is Tier.CONSTRAINED and tier_for(6e5).ceiling_ms == 5000
    with pytest.raises(ValueError):
        LayerPolicy([2.0, 1.0])


def link(
    rate_bps: float, start: float, seconds: float, send_bps: float, size: int = 1200
) -> list[PacketFeedback]:
    """Packets sent at send_bps through a FIFO link of rate_bps (queue grows if faster)."""
    out, t, free_at = [], start, start
    gap = size * 8 / send_bps
    while t < start + seconds:
        free_at = max(free_at, t) + size * 8 / rate_bps
        out.append(PacketFeedback(t, free_at + 0.02, size))
        t += gap
    return out


def feed(est: BandwidthEstimator, packets: list[PacketFeedback], every_s: float = 0.1) -> None:
    """Deliver feedback in reports every `every_s`, as TWCC does (by arrival time)."""
    start = packets[0].send_s
    batch: list[PacketFeedback] = []
    deadline = start + every_s
    for p in packets:
        if p.arrival_s is not None and p.arrival_s > deadline:
            est.on_twcc(deadline, batch)
            batch, deadline = [], deadline + every_s
        batch.append(p)
    est.on_twcc(deadline, batch)


def test_estimator_backs_off_to_the_bottleneck_when_a_queue_builds() -> None:
    est = BandwidthEstimator(initial_bps=3_000_000)
    feed(est, link(rate_bps=1_000_000, start=0.0, seconds=3.0, send_bps=1_500_000))
    assert est.overusing
    assert 700_000 <= est.estimate(3.5) <= 1_100_000


def test_estimator_rises_to_what_was_delivered_without_queueing_and_no_further() -> None:
    est = BandwidthEstimator(initial_bps=500_000)
    feed(est, link(rate_bps=5_000_000, start=0.0, seconds=5.0, send_bps=800_000))
    assert not est.overusing
    # evidence only: the link carried 800 kbit/s, nothing says it carries more
    assert 0.95 * 800_000 < est.estimate(5.0) <= 1.05 * 800_000


def test_estimator_is_not_raised_by_a_burst() -> None:
    """A keyframe that left at once arrives at the link's peak (loopback: ~1 ms for
    20 kB); a viewer's first feedback holding it said 'delivered 2.7 Mbit/s' of a
    0.6 Mbit/s stream, and the probes that would have measured the link never ran."""
    est = BandwidthEstimator(initial_bps=1_000_000)
    burst = [PacketFeedback(1.0, 1.0 + k * 0.0001, 1200) for k in range(20)]
    est.on_twcc(1.1, burst)  # 24 kB in 2 ms
    steady = [PacketFeedback(1.0 + k * 0.02, 1.003 + k * 0.02, 1500) for k in range(1, 10)]
    est.on_twcc(1.2, steady)  # then 600 kbit/s for 0.2 s
    assert est.delivered_bps() is None  # 0.2 s is no rate yet
    assert est.estimate(1.2) == 1_000_000
    feed(est, link(rate_bps=5_000_000, start=1.2, seconds=2.0, send_bps=600_000))
    assert est.estimate(3.2) <= 1_000_000  # 600 kbit/s over a second proves no more


def test_estimator_loss_and_remb() -> None:
    est = BandwidthEstimator(initial_bps=2_000_000)
    for i in range(1, 11):
        est.on_receiver_report(i * 0.5, fraction_lost=0.3)
    assert est.estimate(5.0) < 1_200_000  # 30 % loss for 5 s: down by more than 40 %
    est.on_remb(5.5, 300_000)
    assert est.estimate(5.5) == 300_000


def test_estimator_stays_bounded_when_a_receiver_reports_time_going_backwards() -> None:
    """Arrival times come from the viewer: out-of-window ones are dropped, memory bounded."""
    from tchat.abr.estimator import MAX_ARRIVALS, WINDOW_S, BandwidthEstimator, PacketFeedback

    est = BandwidthEstimator()
    t = 100.0
    for i in range(400):
        # every batch claims arrivals ever further in the past, 50 packets each
        batch = [PacketFeedback(t, t - i * 2.0 - k * 0.001, 1200) for k in range(50)]
        est.on_twcc(t + i * 0.05, batch)
    arrivals = est._arrivals
    assert len(arrivals) <= MAX_ARRIVALS
    newest = max(a for a, _, _ in arrivals)
    assert all(a >= newest - WINDOW_S for a, _, _ in arrivals)
