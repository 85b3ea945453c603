"""State the chat instances share beyond pub/sub: slow-mode claims and presence counts.

`memory` (one process) or `redis` (REDIS_URL: the Redis the bus uses). Nothing here
is durable or needs to be: slow-mode claims live one slow-mode period, presence
entries a few seconds (an instance that dies drops out when its entry expires).
Redis keys: `tchat:slow:<room>\\0<identity>` (SET NX PX), `tchat:presence:<instance>`
(a hash room → "watching chatting", EXPIRE) and `tchat:presence` (a sorted set of
instances scored by when their entry expires).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("tchat.chat.shared")
PREFIX = "tchat:"
Counts = dict[str, tuple[int, int]]  # room → (watching, chatting)


class Shared(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, key: str, seconds: float) -> float | None:
        """Take `key` for `seconds` unless taken: None if taken now, else seconds left."""

    async def exchange(self, instance: str, counts: Counts, ttl_s: float) -> Counts:
        """Publish this instance's counts (kept ttl_s) and return every live instance's sum."""


class MemoryShared:
    name = "memory"

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def claim(self, key: str, seconds: float) -> float | None:
        return None  # one process: the room's in-memory slow-mode check is the whole truth

    async def exchange(self, instance: str, counts: Counts, ttl_s: float) -> Counts:
        return dict(counts)


class RedisShared:
    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aioredis.Redis | None = None
        self._warned = False

    async def start(self) -> None:
        self._client = aioredis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _failed(self, what: str, exc: Exception) -> None:
        if not self._warned:  # once per outage, not once per post
            log.warning("redis %s failed (%s); using this instance's view", what, exc)
            self._warned = True

    async def claim(self, key: str, seconds: float) -> float | None:
        assert self._client is not None
        name = PREFIX + "slow:" + key
        try:
            if await self._client.set(name, b"1", nx=True, px=max(1, int(seconds * 1000))):
                self._warned = False
                return None
            left_ms = await self._client.pttl(name)
        except (RedisError, OSError) as exc:
            self._failed("slow-mode claim", exc)
            return None  # the local check has passed; do not refuse for our outage
        return max(0.0, left_ms / 1000.0) if left_ms > 0 else None

    async def exchange(self, instance: str, counts: Counts, ttl_s: float) -> Counts:
        assert self._client is not None
        mine = PREFIX + "presence:" + instance
        index = PREFIX + "presence"
        now = time.time()
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(mine)
                if counts:
                    pipe.hset(mine, mapping={r: f"{w} {c}" for r, (w, c) in counts.items()})
                    pipe.pexpire(mine, int(ttl_s * 1000))
                pipe.zadd(index, {instance: now + ttl_s})
                pipe.zremrangebyscore(index, "-inf", now)
                pipe.zrange(index, 0, -1)
                replies = await pipe.execute()
            instances = [i.decode() for i in replies[-1]]
            async with self._client.pipeline(transaction=False) as pipe:
                for other in instances:
                    pipe.hgetall(PREFIX + "presence:" + other)
                tables = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("presence exchange", exc)
            return dict(counts)
        self._warned = False
        total: dict[str, list[int]] = {}
        for table in tables:
            for room, value in table.items():
                w, _, c = value.decode().partition(" ")
                agg = total.setdefault(room.decode(), [0, 0])
                agg[0] += int(w or 0)
                agg[1] += int(c or 0)
        return {room: (w, c) for room, (w, c) in total.items()}


def make_shared(redis_url: str) -> Shared:
    return RedisShared(redis_url) if redis_url else MemoryShared()
