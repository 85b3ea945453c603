"""In-process bus: one instance, delivery is a function call."""

from __future__ import annotations

from typing import Any

from tchat.bus.base import Handler


class MemoryBus:
    name = "memory"

    def __init__(self) -> None:
        self._handler: Handler | None = None
        self._channels: set[str] = set()

    async def start(self, handler: Handler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None

    async def publish(self, channel: str, payload: str) -> None:
        if self._handler is not None and channel in self._channels:
            self._handler(channel, payload)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def allocate_node(self) -> int | None:
        return None  # one process: any node is unique

    def health(self) -> dict[str, Any]:
        return {"backend": self.name, "ok": True, "state": "local"}
