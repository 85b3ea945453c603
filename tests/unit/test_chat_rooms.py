"""Room membership and bus subscription under interleaved joins and leaves.

The bus and the listeners' sockets yield to the loop inside each call, as Redis and
WebSockets do, so a join can run while a leave is half done. Found by CI: two
sockets leaving together raised KeyError, and a socket joining as the last ones
left was added to a room the leave then dropped — it never got presence or chat.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

from tchat.chat.service import ChatService, Listener
from tchat.chat.store import ChatStore

ROOM = "r1"


class YieldingBus:
    """RedisBus's order: the channel is wanted (or dropped) at once, then a few loop
    turns pass inside the call (Redis confirming)."""

    name = "yielding"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.channels: set[str] = set()

    async def _turns(self) -> None:
        for _ in range(self.rng.randint(0, 4)):
            await asyncio.sleep(0)

    async def start(self, handler: Any) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, channel: str, payload: str) -> None: ...

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        await self._turns()

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        await self._turns()


def service(bus: YieldingBus) -> ChatService:
    # join/leave never touch the store; moderation off keeps it out entirely
    return ChatService(cast(ChatStore, object()), cast(Any, bus), 10.0, 10, moderation=False)


def listener(got: list[str], rng: random.Random) -> Listener:
    async def send(frame: str) -> None:
        got.append(frame)

    made = Listener(send, lambda: None)
    close = made.close

    async def slow_close() -> None:  # a WebSocket's close handshake takes loop turns
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
        await close()

    made.close = slow_close  # type: ignore[method-assign]
    return made


async def test_two_leaving_and_one_joining_together() -> None:
    rng = random.Random(1)
    bus = YieldingBus(rng)
    chat = service(bus)
    a1, a2 = listener([], rng), listener([], rng)
    got: list[str] = []
    a3 = listener(got, rng)
    await chat.join(ROOM, a1)
    await chat.join(ROOM, a2)
    await asyncio.gather(chat.leave(ROOM, a1), chat.leave(ROOM, a2), chat.join(ROOM, a3))
    assert chat.listener_counts() == {ROOM: 1}
    assert bus.channels == {ROOM}
    chat._deliver(ROOM, "frame")  # what the bus and presence do
    await asyncio.sleep(0)
    assert got == ["frame"]
    await chat.leave(ROOM, a3)
    assert chat.listener_counts() == {} and bus.channels == set()


async def test_any_interleaving_ends_subscribed_exactly_where_someone_listens() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        bus = YieldingBus(rng)
        chat = service(bus)
        rooms = ["r1", "r2"]
        present: list[tuple[str, Listener]] = []
        for _ in range(rng.randint(0, 3)):
            room = rng.choice(rooms)
            present.append((room, listener([], rng)))
            await chat.join(*present[-1])
        calls = []
        for room, made in present:
            if rng.random() < 0.7:
                calls.append(chat.leave(room, made))
        for _ in range(rng.randint(1, 4)):
            joiner = (rng.choice(rooms), listener([], rng))
            calls.append(chat.join(*joiner))
            if rng.random() < 0.3:
                calls.append(chat.leave(*joiner))  # a socket gone as it came
        rng.shuffle(calls)
        await asyncio.gather(*calls)
        counts = chat.listener_counts()
        assert all(counts.values()), (seed, counts)
        assert bus.channels == set(counts), (seed, bus.channels, counts)
        assert chat._settling == {}, seed


async def test_a_join_cancelled_while_subscribing_is_undone_by_its_leave() -> None:
    rng = random.Random(3)
    bus = YieldingBus(rng)
    bus._turns = lambda: asyncio.sleep(3600)  # type: ignore[method-assign]  # never confirmed
    chat = service(bus)
    made = listener([], rng)
    joining = asyncio.create_task(chat.join(ROOM, made))
    await asyncio.sleep(0)
    assert bus.channels == {ROOM}
    joining.cancel()  # the socket's task, gone while Redis had not confirmed
    await asyncio.gather(joining, return_exceptions=True)
    bus._turns = YieldingBus._turns.__get__(bus)  # type: ignore[method-assign]
    await chat.leave(ROOM, made)  # what RoomSocket's finally does
    assert chat.listener_counts() == {} and bus.channels == set()
