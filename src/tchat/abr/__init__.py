"""Adaptive quality: bandwidth estimate per viewer, layer policy with hysteresis, latency
tiers. Pure modules with an injected clock; the SFU's per-second tick drives them."""
