"""Issue 14.5 on a real SQLite file: the write queue is bounded (StoreBusy, 503 with
Retry-After), and a message whose id is taken is an error or posted under a fresh id,
never acknowledged and dropped."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from tchat.bus.memory import MemoryBus
from tchat.chat.ids import IdGenerator
from tchat.chat.models import Message
from tchat.chat.protocol import ProtocolError
from tchat.chat.service import ChatService
from tchat.chat.sqlite import SqliteChatStore
from tchat.chat.store import IdTaken, StoreBusy

DAY = 86400.0


def _msg(i: int, text: str = "") -> Message:
    return Message(i, "room", "alice", text or f"m{i}", time.time())


async def test_full_write_queue_refuses_at_once(tmp_path: Path) -> None:
    store = SqliteChatStore(tmp_path / "chat.sqlite3", ttl_s=DAY, max_queue=8)
    await store.start()
    gate = threading.Event()
    loop = asyncio.get_running_loop()
    blocker = loop.run_in_executor(store._writer_thread, gate.wait)  # a commit that hangs
    try:
        first = asyncio.create_task(store.append(_msg(1)))
        await asyncio.sleep(0.05)  # the writer took it as its batch; it waits on the blocker
        waiting = [asyncio.create_task(store.append(_msg(i))) for i in range(2, 10)]
        await asyncio.sleep(0)
        with pytest.raises(StoreBusy, match="busy"):
            await asyncio.wait_for(store.append(_msg(99)), 5)
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *waiting), 30)  # all queued ones commit
        stored = await store.history("room", 50)
        assert sorted(m.id for m in stored) == list(range(1, 10))
    finally:
        gate.set()
        await blocker
        await store.close()


async def test_taken_id_is_an_error_not_a_silent_ack(tmp_path: Path) -> None:
    store = SqliteChatStore(tmp_path / "chat.sqlite3", ttl_s=DAY)
    await store.start()
    try:
        await store.append(_msg(7, "first"))
        with pytest.raises(IdTaken):
            await store.append(_msg(7, "second"))
        # in one batch: the colliding one fails, its batch-mates are stored
        results = await asyncio.gather(
            store.append(_msg(8)), store.append(_msg(7, "third")), store.append(_msg(9)),
            return_exceptions=True,
        )  # fmt: skip
        assert results[0] is None and isinstance(results[1], IdTaken) and results[2] is None
        texts = {m.id: m.text for m in await store.history("room", 50)}
        assert texts == {7: "first", 8: "m8", 9: "m9"}
    finally:
        await store.close()


async def test_two_services_drawing_one_id_both_keep_their_message(tmp_path: Path) -> None:
    """Two processes on one store without Redis can share a node id; their messages
    collide on id. Each post is acknowledged only once stored, under a fresh id if needed."""
    path = tmp_path / "chat.sqlite3"
    services = [
        ChatService(SqliteChatStore(path, ttl_s=DAY), MemoryBus(), 100.0, 100, node_id=3)
        for _ in range(2)
    ]
    for service in services:
        await service.start()
        service.ids = IdGenerator(3, clock_ms=lambda: 1_800_000_000_000)  # the same ms
    try:
        a = await services[0].post("room", "alice", "from a")
        b = await services[1].post("room", "bob", "from b")
        assert a.id != b.id
        stored = {m.id: m.text for m in await services[0].store.history("room", 10)}
        assert stored == {a.id: "from a", b.id: "from b"}
        # a store that keeps answering "taken" ends in an error, not an ack
        services[1].ids = IdGenerator(3, clock_ms=lambda: 1_800_000_000_000)
        services[1].ids.next_id = lambda: a.id  # type: ignore[method-assign]
        with pytest.raises(ProtocolError) as err:
            await services[1].post("room", "bob", "again")
        assert err.value.code == "store_unavailable"
    finally:
        for service in services:
            await service.close()
