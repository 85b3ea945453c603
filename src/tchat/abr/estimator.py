"""Bandwidth estimate per viewer from what the viewer sends back (sans-I/O, clock injected).

Inputs, each a method call with `now` (seconds):
- `on_twcc(now, packets)` — transport-wide congestion control feedback: per packet the
  send time, the arrival time (None when reported lost) and its size. From it come the
  delivered rate over a sliding window and the standing queue (one-way delay above its
  10 s minimum): the delay-based half of Google Congestion Control, simplified.
- `on_remb(now, bps)` — the receiver's own estimate (REMB), taken as an upper bound.
- `on_receiver_report(now, fraction_lost)` and `on_nack(now, count)` — loss.

`estimate(now)` moves only on evidence, because the SFU does not send at the estimate
(it sends whole simulcast layers, plus probes):
- a standing queue (over-use: the lowest delay of the last QUEUE_WINDOW_S is
  OVERUSE_MS above the 10 s minimum) sets it to 85 % of the delivered rate, which on a
  saturated bottleneck is the bottleneck's rate (measured over the last 0.25 s);
- otherwise a delivered rate above the estimate proves the link carries it and raises
  it (this is how probes raise it);
- loss above 10 % scales it down by (1 - loss/2) per second.
Delay *spikes* (a keyframe burst draining) do not count: the recent minimum ignores
them, only a queue that never drains does. Nor does a queue through which packets still
arrive as fast as they were sent (a receiver that stalled and caught up): only one
that spreads packets out (`link_limited`) measures the link. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_S = 1.0  # delivered-rate window
QUEUE_WINDOW_S = 0.15  # the recent minimum delay (about one feedback interval)
BASE_WINDOW_S = 10.0  # the base (empty-queue) delay
OVERUSE_MS = 20.0  # standing queue that means the link is saturated
BACKOFF = 0.85
SATURATED_WINDOW_S = 0.25  # while a queue stands, arrivals come at the bottleneck's rate
LINK_LIMITED = 0.98  # sent in less time than they took to arrive (2 % for jitter)
LOSS_HIGH = 0.10
MAX_ARRIVALS = 8192  # a second of arrivals at ~90 Mbit/s of full-size packets; bounds work


@dataclass(frozen=True, slots=True)
class PacketFeedback:
    send_s: float
    arrival_s: float | None  # None: reported lost
    size_bytes: int


class _WindowMin:
    """Minimum of (t, value) over a sliding time window (monotonic deque, O(1) amortised)."""

    __slots__ = ("_q", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._q: deque[tuple[float, float]] = deque()

    def push(self, t: float, value: float) -> None:
        q = self._q
        while q and q[-1][1] >= value:
            q.pop()
        q.append((t, value))
        while q[0][0] < t - self.window:
            q.popleft()

    def min(self) -> float | None:
        return self._q[0][1] if self._q else None


class BandwidthEstimator:
    def __init__(self, initial_bps: float = 1_000_000.0, min_bps: float = 30_000.0) -> None:
        self._estimate = initial_bps
        self.min_bps = min_bps
        # (arrival, bytes, sent); arrival times come from the viewer, so bounded and pruned
        # against the newest one seen, whatever order a receiver reports them in
        self._arrivals: deque[tuple[float, int, float]] = deque(maxlen=MAX_ARRIVALS)
        self._newest = float("-inf")
        self._recent = _WindowMin(QUEUE_WINDOW_S)
        self._base = _WindowMin(BASE_WINDOW_S)
        self._loss = 0.0
        self._remb: float | None = None
        self._last_update: float | None = None
        self.overusing = False
        self._before_overuse = initial_bps  # the estimate when this over-use began
        self._overuse_peak = 0.0  # highest saturated rate seen during this over-use
        self._overuse_since = 0.0

    # --- inputs ---------------------------------------------------------------------------
    def on_twcc(self, now: float, packets: list[PacketFeedback]) -> None:
        lost = 0
        newest = self._newest
        for p in packets:
            if p.arrival_s is None:
                lost += 1
                continue
            if p.arrival_s < newest - WINDOW_S:  # far out of order: no use, and unbounded
                continue
            newest = max(newest, p.arrival_s)
            self._arrivals.append((p.arrival_s, p.size_bytes, p.send_s))
            delay = p.arrival_s - p.send_s
            self._recent.push(p.arrival_s, delay)
            self._base.push(p.arrival_s, delay)
        self._newest = newest
        if packets:
            self._note_loss(lost / len(packets))
        self._update(now)

    def on_remb(self, now: float, bps: float) -> None:
        self._remb = bps
        self._update(now)

    def on_receiver_report(self, now: float, fraction_lost: float) -> None:
        self._note_loss(fraction_lost)
        self._update(now)

    def on_nack(self, now: float, count: int, packets_expected: int) -> None:
        if packets_expected > 0:
            self._note_loss(min(1.0, count / packets_expected))
        self._update(now)

    # --- outputs --------------------------------------------------------------------------
    def estimate(self, now: float) -> float:
        self._update(now)
        bps = self._estimate
        if self._remb is not None:
            bps = min(bps, self._remb)
        return max(self.min_bps, bps)

    @property
    def loss(self) -> float:
        return self._loss

    def delivered_bps(self, window_s: float = WINDOW_S) -> float | None:
        """Bytes that arrived over the last `window_s` (≤ WINDOW_S), per second, in bits."""
        if len(self._arrivals) < 2:
            return None
        newest = self._arrivals[-1][0]
        first, first_size, total = newest, 0, 0
        for arrival, size, _ in reversed(self._arrivals):
            if arrival < newest - window_s:
                break
            first, first_size = arrival, size
            total += size
        if newest - first < window_s / 2:
            # a burst (a keyframe that left at once, a receiver catching up) arrives at
            # the link's peak: only a span of at least half the window is a rate
            return None
        # the oldest packet's bytes arrived before the span starts
        return 8.0 * (total - first_size) / (newest - first)

    def link_limited(self, window_s: float) -> bool:
        """Did the last `window_s` of arrivals come slower than they were sent? A queue
        that stands while everything sent still gets through at the rate it was sent
        (a receiver that stalled, then caught up) says nothing about the link's rate."""
        if len(self._arrivals) < 3:
            return False
        newest = self._arrivals[-1][0]
        recent = [a for a in self._arrivals if a[0] >= newest - window_s]
        if len(recent) < 3:
            return False
        arrived = recent[-1][0] - recent[0][0]
        sent = max(a[2] for a in recent) - min(a[2] for a in recent)
        return arrived > 0 and sent < LINK_LIMITED * arrived

    @property
    def estimate_before_overuse(self) -> float:
        """The estimate when the last over-use began (what the link carried before)."""
        return self._before_overuse

    def queue_delay_ms(self) -> float | None:
        """Standing queue: lowest recent one-way delay above the 10 s minimum."""
        recent, base = self._recent.min(), self._base.min()
        if recent is None or base is None:
            return None
        return 1000.0 * (recent - base)

    # --- internals ------------------------------------------------------------------------
    def _note_loss(self, fraction: float) -> None:
        self._loss = 0.7 * self._loss + 0.3 * max(0.0, min(1.0, fraction))

    def _update(self, now: float) -> None:
        newest = self._newest if self._arrivals else now
        while self._arrivals and self._arrivals[0][0] < newest - WINDOW_S:
            self._arrivals.popleft()
        last, self._last_update = self._last_update, now
        if last is None or now <= last:
            return
        dt = now - last
        delivered = self.delivered_bps()
        queue = self.queue_delay_ms()
        was = self.overusing
        self.overusing = queue is not None and queue > OVERUSE_MS
        if self.overusing and not was:
            self._before_overuse, self._overuse_peak = self._estimate, 0.0
            self._overuse_since = newest
        saturated = None
        if (
            self.overusing
            and newest - self._overuse_since >= SATURATED_WINDOW_S
            and self.link_limited(SATURATED_WINDOW_S)
        ):
            # the rate window lies wholly inside the over-use and the packets in it came
            # slower than they left: the link was the limit throughout
            saturated = self.delivered_bps(SATURATED_WINDOW_S)
        if saturated is not None:
            # one decrease per over-use episode, to its best measure of the bottleneck
            # (a short window's rate is noisy, and applying it again and again ratchets)
            self._overuse_peak = max(self._overuse_peak, saturated)
            self._estimate = min(self._before_overuse, BACKOFF * self._overuse_peak)
        elif self._loss > LOSS_HIGH:
            self._estimate *= (1.0 - self._loss / 2.0) ** dt
        elif delivered is not None and delivered > self._estimate:
            self._estimate = delivered  # the link carried this without a queue
        self._estimate = max(self.min_bps, self._estimate)
