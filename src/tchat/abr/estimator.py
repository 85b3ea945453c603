"""Bandwidth estimate per viewer from what the viewer sends back (sans-I/O, clock injected).

Inputs, each a method call with `now` (seconds):
- `on_twcc(now, packets)` — transport-wide congestion control feedback: per packet the
  send time, the arrival time (None when reported lost) and its size. From it come the
  delivered rate over a sliding window and the queueing-delay trend (one-way delay
  growth): the delay-based half of Google Congestion Control, simplified.
- `on_remb(now, bps)` — the receiver's own estimate (REMB), taken as an upper bound.
- `on_receiver_report(now, fraction_lost)` and `on_nack(now, count)` — loss.

`estimate(now)` combines them in the manner of GCC: while the delay trend is flat the
estimate grows multiplicatively (8 %/s) but never far above what was delivered; on
over-use (delay grows) it falls to 85 % of the delivered rate; loss above 10 % scales it
down by (1 - loss/2). Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_S = 1.0  # delivered-rate window
TREND_WINDOW_S = 0.5  # delay-trend window
OVERUSE_MS_PER_S = 8.0  # one-way delay growth that means a queue is building
GROWTH_PER_S = 0.08
BACKOFF = 0.85
LOSS_HIGH = 0.10
LOSS_LOW = 0.02
MAX_OVER_DELIVERED = 1.5  # never estimate far above what actually got through


@dataclass(frozen=True, slots=True)
class PacketFeedback:
    send_s: float
    arrival_s: float | None  # None: reported lost
    size_bytes: int


class BandwidthEstimator:
    def __init__(self, initial_bps: float = 1_000_000.0, min_bps: float = 30_000.0) -> None:
        self._estimate = initial_bps
        self.min_bps = min_bps
        self._arrivals: deque[tuple[float, int]] = deque()  # (arrival, bytes)
        self._delays: deque[tuple[float, float]] = deque()  # (arrival, one-way delay)
        self._loss = 0.0
        self._remb: float | None = None
        self._last_update: float | None = None
        self.overusing = False

    # --- inputs ---------------------------------------------------------------------------
    def on_twcc(self, now: float, packets: list[PacketFeedback]) -> None:
        lost = 0
        for p in packets:
            if p.arrival_s is None:
                lost += 1
                continue
            self._arrivals.append((p.arrival_s, p.size_bytes))
            self._delays.append((p.arrival_s, p.arrival_s - p.send_s))
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

    def delivered_bps(self) -> float | None:
        if len(self._arrivals) < 2:
            return None
        span = self._arrivals[-1][0] - self._arrivals[0][0]
        if span <= 0.05:
            return None
        return 8.0 * sum(size for _, size in list(self._arrivals)[1:]) / span

    def delay_trend_ms_per_s(self) -> float | None:
        """Least-squares slope of one-way delay over the last TREND_WINDOW_S."""
        if len(self._delays) < 5:
            return None
        n = len(self._delays)
        mean_t = sum(t for t, _ in self._delays) / n
        mean_d = sum(d for _, d in self._delays) / n
        var = sum((t - mean_t) ** 2 for t, _ in self._delays)
        if var <= 0:
            return None
        cov = sum((t - mean_t) * (d - mean_d) for t, d in self._delays)
        return 1000.0 * cov / var

    # --- internals ------------------------------------------------------------------------
    def _note_loss(self, fraction: float) -> None:
        self._loss = 0.7 * self._loss + 0.3 * max(0.0, min(1.0, fraction))

    def _update(self, now: float) -> None:
        newest = self._arrivals[-1][0] if self._arrivals else now
        while self._arrivals and self._arrivals[0][0] < newest - WINDOW_S:
            self._arrivals.popleft()
        while self._delays and self._delays[0][0] < newest - TREND_WINDOW_S:
            self._delays.popleft()
        last, self._last_update = self._last_update, now
        if last is None or now <= last:
            return
        dt = now - last
        delivered = self.delivered_bps()
        trend = self.delay_trend_ms_per_s()
        self.overusing = trend is not None and trend > OVERUSE_MS_PER_S
        if self.overusing and delivered is not None:
            self._estimate = min(self._estimate, BACKOFF * delivered)
        elif self._loss > LOSS_HIGH:
            self._estimate *= (1.0 - self._loss / 2.0) ** dt
        elif self._loss < LOSS_LOW or trend is not None:
            self._estimate *= (1.0 + GROWTH_PER_S) ** dt
            if delivered is not None:
                self._estimate = min(self._estimate, MAX_OVER_DELIVERED * delivered)
        self._estimate = max(self.min_bps, self._estimate)
