"""Redis pub/sub bus: several `tchat serve` processes share rooms.

One subscriber connection per process, subscribed to the channels of rooms that
have local listeners; a reader task hands messages to the handler. If Redis
drops, the reader reconnects and re-subscribes; publishes fail with
BusUnavailable meanwhile (the caller falls back to local delivery).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tchat.aio import cancel_and_wait
from tchat.bus import BusUnavailable, Handler

log = logging.getLogger("tchat.bus.redis")
PREFIX = "tchat:"


class RedisBus:
    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aioredis.Redis | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._channels: set[str] = set()
        self._handler: Handler | None = None
        self._reader: asyncio.Task[None] | None = None
        self._has_channels = asyncio.Event()

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        self._client = aioredis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=15
        )
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._reader = asyncio.create_task(self._read_loop(), name="bus-redis-reader")

    async def close(self) -> None:
        if self._reader:
            await cancel_and_wait(self._reader)
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        if self._client is not None:
            await self._client.aclose()

    async def publish(self, channel: str, payload: str) -> None:
        assert self._client is not None
        try:
            await self._client.publish(PREFIX + channel, payload)
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis publish failed: {exc}") from None

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self._has_channels.set()
        if self._pubsub is not None:
            try:
                await self._pubsub.subscribe(PREFIX + channel)
            except (RedisError, OSError) as exc:
                log.warning("redis subscribe %s failed (retried on reconnect): %s", channel, exc)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if self._pubsub is not None:
            try:
                await self._pubsub.unsubscribe(PREFIX + channel)
            except (RedisError, OSError):
                pass  # the reconnect path subscribes only to live channels

    async def allocate_node(self) -> int | None:
        """Instances sharing this Redis take turns through 1024 node numbers."""
        assert self._client is not None
        try:
            return (int(await self._client.incr(PREFIX + "chat:node")) - 1) % 1024
        except (RedisError, OSError) as exc:
            log.warning("no node number from redis (%s); using a random one", exc)
            return None

    async def _read_loop(self) -> None:
        assert self._pubsub is not None
        while True:
            if not self._channels:
                self._has_channels.clear()
                await self._has_channels.wait()
            try:
                if not self._pubsub.subscribed:
                    await self._pubsub.subscribe(*(PREFIX + c for c in self._channels))
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("redis bus reader: %s; reconnecting", exc)
                await asyncio.sleep(1.0)
                try:
                    await self._pubsub.reset()
                except (RedisError, OSError):
                    pass
                continue
            if msg is None or msg.get("type") != "message" or self._handler is None:
                continue
            channel = msg["channel"].decode()[len(PREFIX) :]
            data = msg["data"]
            self._handler(channel, data.decode() if isinstance(data, bytes) else str(data))
