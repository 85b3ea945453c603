"""One viewer's adaptive loop (estimator + policy + prober) against simulated links.

A FIFO bottleneck of a scripted rate carries what the controller makes the SFU send
(the chosen layer's rate plus probe padding); TWCC-like feedback comes back every
100 ms. Fake clock, no sockets: this checks the wiring decisions, the real-link
figures come from tests/performance/test_latency.py.
"""

from __future__ import annotations

from collections.abc import Callable

from tchat.abr.controller import AbrConfig, ViewerAbr
from tchat.abr.estimator import BandwidthEstimator, PacketFeedback
from tchat.abr.policy import PAUSED, Tier, oscillations

COSTS = [190_000.0, 520_000.0, 1_650_000.0]  # layer + audio as sent, bit/s
STEP = 0.02  # the SFU's pacing step
PACKET = 1200


def simulate(
    link: Callable[[float], float], seconds: float, start_layer: int = 1
) -> tuple[ViewerAbr, list[tuple[float, int, float]]]:
    """Run the loop; returns the controller and (t, layer, estimate) per decision."""
    abr = ViewerAbr(AbrConfig(), start_layer=start_layer, now=0.0)
    free_at = 0.0  # when the bottleneck has sent everything queued
    in_flight: list[PacketFeedback] = []
    timeline: list[tuple[float, int, float]] = []
    carry = 0.0
    t = 0.0
    next_feedback, next_decide = 0.1, 0.5
    while t < seconds:
        media_bytes = 0
        if abr.layer != PAUSED:
            carry += COSTS[abr.layer] * STEP / 8
        sizes = []
        while carry >= PACKET:
            carry -= PACKET
            sizes.append(PACKET)
            media_bytes += PACKET
        pad = abr.padding_bytes(t, media_bytes, STEP)
        sizes += [255] * (pad // 255)
        for size in sizes:
            free_at = max(free_at, t) + size * 8 / link(t)
            in_flight.append(PacketFeedback(t, free_at + 0.005, size))
        t = round(t + STEP, 6)
        if t >= next_feedback:
            next_feedback += 0.1
            arrived = [p for p in in_flight if p.arrival_s is not None and p.arrival_s <= t]
            in_flight = [p for p in in_flight if p.arrival_s is not None and p.arrival_s > t]
            if arrived:
                abr.on_feedback(t, arrived)
        if t >= next_decide:
            next_decide += 0.5
            decision = abr.decide(t, COSTS)
            assert decision is not None
            timeline.append((t, decision.layer, abr.estimator.estimate(t)))
    return abr, timeline


def test_fast_link_climbs_to_the_top_layer_and_high_tier_then_stops_probing() -> None:
    abr, timeline = simulate(lambda t: 3_000_000, 40)
    assert abr.layer == 2 and abr.tier.tier is Tier.HIGH
    climbed = next(t for t, layer, _ in timeline if layer == 2)
    assert 5 <= climbed <= 20
    assert abr.failed_probes == 0
    assert abr.policy is not None and oscillations(abr.policy.switches, 10) == 0
    assert abr.probes <= 5  # nothing left to learn once high tier on the top layer


def test_constrained_link_keeps_a_layer_that_flows_and_backs_off_its_probes() -> None:
    abr, timeline = simulate(lambda t: 600_000, 60)
    # the 520 kbit/s layer flows without a queue: failed probes do not cost it
    assert abr.layer == 1 and abr.tier.tier is Tier.CONSTRAINED
    assert all(layer == 1 for _, layer, _ in timeline)
    assert abr.failed_probes >= 1
    assert abr.probes <= 10  # 1.5x backoff up to 12 s, not one every 3 s
    # the estimate ends near the bottleneck, below it
    assert 0.6 * 600_000 <= timeline[-1][2] <= 1.01 * 600_000


def test_a_link_that_cannot_carry_the_layer_falls_to_the_one_below() -> None:
    abr, timeline = simulate(lambda t: 450_000, 30)
    assert abr.layer == 0 and abr.tier.tier is Tier.CONSTRAINED
    down = next(t for t, layer, _ in timeline if layer == 0)
    assert down <= 3.0


def test_standard_link_keeps_the_middle_layer_and_standard_tier() -> None:
    abr, timeline = simulate(lambda t: 1_500_000, 40)
    assert abr.layer == 1 and abr.tier.tier is Tier.STANDARD
    assert all(layer == 1 for _, layer, _ in timeline)


def test_step_down_then_up_follows_the_hysteresis() -> None:
    def link(t: float) -> float:
        return 1_000_000 if 25 <= t < 28 else 3_000_000

    abr, _ = simulate(link, 60)
    assert abr.policy is not None
    switches = abr.policy.switches
    down = next((t, layer) for t, layer, _ in switches if t >= 25)
    assert down[1] == 1 and down[0] - 25 <= 2.0
    up = next(t for t, layer, _ in switches if t > down[0] and layer > down[1])
    assert 10.0 <= up - down[0] <= 15.0
    assert oscillations(switches, 10) == 0


def test_a_link_below_the_lowest_layer_pauses_video() -> None:
    abr, _ = simulate(lambda t: 150_000, 20, start_layer=0)
    assert abr.layer == PAUSED


def test_estimator_ignores_a_keyframe_burst_but_not_a_standing_queue() -> None:
    est = BandwidthEstimator(initial_bps=2_000_000)
    # 1 Mbps of 1200-byte packets on a 3 Mbps link, plus a 40 kB burst at t=1
    packets, free_at, t = [], 0.0, 0.0
    while t < 3.0:
        sizes = [1200] * (34 if abs(t - 1.0) < 1e-9 else 1)
        for size in sizes:
            free_at = max(free_at, t) + size * 8 / 3_000_000
            packets.append(PacketFeedback(t, free_at, size))
        t = round(t + 0.0096, 4)
    for i in range(0, len(packets), 10):
        est.on_twcc(packets[i].send_s + 0.1, packets[i : i + 10])
        assert not est.overusing
    assert est.estimate(3.2) == 2_000_000  # no evidence against it, none above it


def test_a_receiver_stall_is_not_taken_for_a_slow_link() -> None:
    est = BandwidthEstimator(initial_bps=2_000_000)
    packets, t = [], 0.0
    while t < 3.0:
        arrival = t + 0.005
        if 1.0 <= t < 1.4:  # the viewer stalled 400 ms, then read its backlog at once
            arrival = 1.4 + (t - 1.0) * 0.05
        packets.append(PacketFeedback(t, arrival, 1200))
        t = round(t + 0.0096, 4)
    packets.sort(key=lambda p: p.arrival_s or 0.0)
    for i in range(0, len(packets), 10):
        batch = packets[i : i + 10]
        est.on_twcc((batch[-1].arrival_s or 0.0) + 0.01, batch)
    assert est.estimate(3.1) == 2_000_000


def test_a_link_that_spreads_packets_out_is_measured() -> None:
    est = BandwidthEstimator(initial_bps=3_000_000)
    packets, t, free_at = [], 0.0, 0.0
    while t < 3.0:
        rate = 3_000_000 if t < 1.0 else 1_000_000  # the link drops under a 1.5 Mbps stream
        free_at = max(free_at, t) + 1200 * 8 / rate
        packets.append(PacketFeedback(t, free_at + 0.005, 1200))
        t = round(t + 1200 * 8 / 1_500_000, 5)
    for i in range(0, len(packets), 10):
        batch = packets[i : i + 10]
        est.on_twcc((batch[-1].arrival_s or 0.0) + 0.01, batch)
    assert est.overusing
    assert 0.75 * 1_000_000 <= est.estimate(3.5) <= 0.9 * 1_000_000
