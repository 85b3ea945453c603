"""Prometheus metrics shared by the capabilities (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "tchat_http_requests_total", "HTTP requests by route and status", ["route", "status"]
)
CHAT_MESSAGES = Counter("tchat_chat_messages_total", "Chat messages stored", ["store"])
CHAT_REJECTED = Counter("tchat_chat_rejected_total", "Chat frames rejected", ["reason"])
CHAT_LISTENERS = Gauge("tchat_chat_listeners", "Open chat WebSocket connections")
CHAT_WRITE_SECONDS = Histogram(
    "tchat_chat_write_seconds",
    "Chat store write latency",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
)
RECORDINGS_ACTIVE = Gauge("tchat_recordings_active", "Recordings in progress")
SEGMENT_UPLOAD_SECONDS = Histogram(
    "tchat_segment_upload_seconds",
    "HLS segment upload latency (closed → stored)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
UPLOAD_FAILURES = Counter("tchat_upload_failures_total", "Failed upload attempts")
BUS_UP = Gauge(
    "tchat_bus_subscriber_up",
    "1 while the Redis subscriber is connected or not needed, 0 while it reconnects",
)
BUS_RECONNECTS = Counter(
    "tchat_bus_reconnects_total", "Redis subscriber connection failures (each retried)"
)
BUS_CHANNELS = Gauge("tchat_bus_channels", "Bus channels this process listens to (rooms)")
