"""The Bus protocol every fan-out backend implements (memory.py, redis.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Handler = Callable[[str, str], None]  # (channel, payload)


class BusUnavailable(Exception):
    """The bus cannot deliver to other instances now."""


class Bus(Protocol):
    name: str

    async def start(self, handler: Handler) -> None:
        """Deliver every message of a subscribed channel to `handler` (on the event loop)."""

    async def close(self) -> None: ...

    async def publish(self, channel: str, payload: str) -> None:
        """Deliver to every subscriber of `channel`, this instance included."""

    async def subscribe(self, channel: str) -> None:
        """Deliver `channel` here from now on; idempotent (a subscribed channel stays so)."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering `channel` here; idempotent."""

    async def allocate_node(self) -> int | None:
        """A node number no other live instance on this bus holds, if the bus can tell."""

    def health(self) -> dict[str, Any]:
        """`{"backend", "ok", "state", …}`: ok is False while fan-out to other
        instances is broken (/healthz reports degraded)."""
