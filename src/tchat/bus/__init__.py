"""Fan-out between instances: the Bus protocol (base.py); backends `memory` and `redis`."""

from __future__ import annotations

from tchat.bus.base import Bus, BusUnavailable, Handler

__all__ = ["Bus", "BusUnavailable", "Handler", "make_bus"]


def make_bus(redis_url: str) -> Bus:
    if redis_url:
        from tchat.bus.redis import RedisBus

        return RedisBus(redis_url)
    from tchat.bus.memory import MemoryBus

    return MemoryBus()
