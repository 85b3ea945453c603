"""The Bus contract, run unchanged against the in-process bus and the Redis bus (a
private `redis-server`): what a subscriber gets, what it does not, health, node numbers.
Delivery to another instance's bus is Redis's alone (the last test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tchat.bus import Bus, make_bus
from tchat.bus.redis import PREFIX

from .test_bus_redis import RedisServer, redis_factory

__all__ = ["redis_factory"]  # the fixture, used here by name


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    def __call__(self, channel: str, payload: str) -> None:
        self.got.append((channel, payload))

    async def wait_for(self, item: tuple[str, str], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while item not in self.got:
                await asyncio.sleep(0.01)


@pytest.fixture(params=["memory", "redis"])
async def buses(
    request: pytest.FixtureRequest, redis_factory: Callable[..., RedisServer]
) -> AsyncIterator[tuple[Callable[[], Awaitable[tuple[Bus, Inbox]]], Callable[[str], int]]]:
    """A way to open buses of one backend, and how many instances subscribe a channel
    (Redis: PUBSUB NUMSUB asked with redis-cli; the in-process bus: 0 once it left)."""
    redis = redis_factory() if request.param == "redis" else None
    opened: list[Bus] = []

    async def open_bus() -> tuple[Bus, Inbox]:
        bus, inbox = make_bus(redis.url if redis else ""), Inbox()
        await bus.start(inbox)
        opened.append(bus)
        return bus, inbox

    def subscribers(channel: str) -> int:
        if redis is None:
            return 0
        return int(redis.cli("pubsub", "numsub", PREFIX + channel).split()[-1])

    yield open_bus, subscribers
    for bus in opened:
        await bus.close()


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_subscriber_gets_its_channels_only_until_it_unsubscribes(buses: Any) -> None:
    open_bus, subscribers = buses
    bus, inbox = await open_bus()
    assert bus.health()["ok"] and bus.health()["backend"] == bus.name
    await bus.subscribe("room:a")
    await bus.publish("room:a", "one")  # this instance included
    await inbox.wait_for(("room:a", "one"))
    await bus.publish("room:b", "not subscribed")
    await bus.unsubscribe("room:a")
    await until(lambda: subscribers("room:a") == 0)  # the bus has left the channel
    await bus.publish("room:a", "after unsubscribe")
    await bus.subscribe("room:c")
    # one publisher, one subscription: in order, so once the marker is here whatever was
    # published before it and delivered is here too
    await bus.publish("room:c", "marker")
    await inbox.wait_for(("room:c", "marker"))
    assert inbox.got == [("room:a", "one"), ("room:c", "marker")]


async def test_node_numbers_differ_between_instances_that_can_tell(buses: Any) -> None:
    open_bus, _ = buses
    first, _ = await open_bus()
    second, _ = await open_bus()
    nodes = [await first.allocate_node(), await second.allocate_node()]
    if first.name == "memory":
        assert nodes == [None, None]  # one process: any node is unique
    else:
        assert None not in nodes and nodes[0] != nodes[1]
        assert all(0 <= n < 1024 for n in nodes if n is not None)


async def test_another_instance_on_redis_gets_what_one_publishes(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """Only Redis has other instances (the in-process bus is one by definition)."""
    url = redis_factory().url
    a, b, inbox_b = make_bus(url), make_bus(url), Inbox()
    await a.start(Inbox())
    await b.start(inbox_b)
    try:
        await b.subscribe("room:x")  # returns once Redis confirmed it
        await a.publish("room:x", "from a")
        await inbox_b.wait_for(("room:x", "from a"))
    finally:
        await a.close()
        await b.close()
