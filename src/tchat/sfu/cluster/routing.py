"""Where rooms and SFU instances are: room → origin instance, instance → addresses, load.

`MemoryRouting` serves one `tchat serve` process; `RedisRouting` (REDIS_URL set) lets
several processes, on several hosts, share instances and rooms. Instance records are
heartbeats with a TTL (INSTANCE_TTL_S): an instance whose supervisor stopped
refreshing it disappears by itself, and a route to a vanished instance counts as no
route. Redis failing raises `RoutingUnavailable` (HTTP 503 for new sessions); media
already flowing never touches this module.

Placement (`pick`): the instance with the fewest viewers (as last reported, plus what
this process placed after that report's sample was taken), skipping instances above
their CPU limit;
ties go to the room's origin (no relay), then to the lowest id.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

INSTANCE_TTL_S = 5.0
PREFIX = "tchat:sfu:"


class RoutingUnavailable(Exception):
    """The routing store (Redis) does not answer."""


@dataclass
class InstanceRecord:
    id: str
    udp_port: int
    host: str  # media, relay and control address
    control: str  # base URL of the control API
    relay_port: int
    pid: int
    viewers: int = 0
    load: float = 0.0
    max_load: float = 0.9
    seen: float = 0.0  # wall clock of the last heartbeat
    # wall clock when `viewers` was sampled (the stats request went out): a viewer placed
    # after it is not in the count yet, whenever the heartbeat got stored
    sampled: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> InstanceRecord:
        return cls(**json.loads(raw))


def pick(
    instances: list[InstanceRecord], pending: dict[str, int], origin: str | None
) -> InstanceRecord | None:
    """Least-loaded instance by viewers (see the module docstring)."""
    usable = [i for i in instances if i.load <= i.max_load] or instances
    if not usable:
        return None
    return min(usable, key=lambda i: (i.viewers + pending.get(i.id, 0), i.id != origin, i.id))


class Routing(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def put_instance(self, rec: InstanceRecord) -> None: ...
    async def remove_instance(self, instance_id: str) -> None: ...
    async def instances(self) -> list[InstanceRecord]: ...
    async def route(self, room: str) -> str | None: ...
    async def set_route(self, room: str, instance_id: str, expected: str | None) -> bool:
        """Point `room` at `instance_id` if its route is still `expected` (None: no
        route); False when another publish claimed it first (compare-and-set)."""
        ...

    async def clear_route(self, room: str, instance_id: str) -> None: ...


class MemoryRouting:
    def __init__(self) -> None:
        self._instances: dict[str, InstanceRecord] = {}
        self._routes: dict[str, str] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def put_instance(self, rec: InstanceRecord) -> None:
        rec.seen = time.time()
        self._instances[rec.id] = rec

    async def remove_instance(self, instance_id: str) -> None:
        self._instances.pop(instance_id, None)
        for room in [r for r, i in self._routes.items() if i == instance_id]:
            del self._routes[room]

    async def instances(self) -> list[InstanceRecord]:
        now = time.time()
        return [r for r in self._instances.values() if now - r.seen <= INSTANCE_TTL_S]

    async def route(self, room: str) -> str | None:
        return self._routes.get(room)

    async def set_route(self, room: str, instance_id: str, expected: str | None) -> bool:
        if self._routes.get(room) != expected:
            return False
        self._routes[room] = instance_id
        return True

    async def clear_route(self, room: str, instance_id: str) -> None:
        if self._routes.get(room) == instance_id:
            del self._routes[room]


# compare-and-set of a room's route: two servers taking WHIPs of one room at once
# must not both go live ("" stands for no route)
_SET_ROUTE_IF = """
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[2] == '') or cur == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


class RedisRouting:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aioredis.Redis | None = None

    async def start(self) -> None:
        # short timeouts: a WHEP request must fail fast with 503, not hang on Redis
        self._client = aioredis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        assert self._client is not None
        return self._client

    async def put_instance(self, rec: InstanceRecord) -> None:
        rec.seen = time.time()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(
                    PREFIX + "instance:" + rec.id, rec.to_json(), px=int(INSTANCE_TTL_S * 1000)
                )
                pipe.sadd(PREFIX + "instances", rec.id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RoutingUnavailable(f"redis: {exc}") from None

    async def remove_instance(self, instance_id: str) -> None:
        try:
            await self.client.delete(PREFIX + "instance:" + instance_id)
            await self.client.srem(PREFIX + "instances", instance_id)
        except (RedisError, OSError) as exc:
            raise RoutingUnavailable(f"redis: {exc}") from None

    async def instances(self) -> list[InstanceRecord]:
        try:
            members = await self.client.smembers(PREFIX + "instances")
            ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
            if not ids:
                return []
            raws = await self.client.mget([PREFIX + "instance:" + i for i in ids])
            gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
            if gone:  # expired heartbeats: forget them
                await self.client.srem(PREFIX + "instances", *gone)
        except (RedisError, OSError) as exc:
            raise RoutingUnavailable(f"redis: {exc}") from None
        return [InstanceRecord.from_json(raw) for raw in raws if raw is not None]

    async def route(self, room: str) -> str | None:
        try:
            raw = await self.client.get(PREFIX + "route:" + room)
        except (RedisError, OSError) as exc:
            raise RoutingUnavailable(f"redis: {exc}") from None
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def set_route(self, room: str, instance_id: str, expected: str | None) -> bool:
        try:
            done = await self.client.eval(
                _SET_ROUTE_IF, 1, PREFIX + "route:" + room, instance_id, expected or ""
            )
        except (RedisError, OSError) as exc:
            raise RoutingUnavailable(f"redis: {exc}") from None
        return bool(done)

    async def clear_route(self, room: str, instance_id: str) -> None:
        key = PREFIX + "route:" + room
        try:
            if await self.client.get(key) == instance_id.encode():
                await self.client.delete(key)
        except (RedisError, OSError) as exc:
            raise RoutingUnavailable(f"redis: {exc}") from None


def make_routing(redis_url: str) -> Routing:
    return RedisRouting(redis_url) if redis_url else MemoryRouting()
