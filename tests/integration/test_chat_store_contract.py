"""One contract, both real stores: SQLite (embedded) and Cassandra (CQL)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tchat.chat.cql import CqlChatStore, bucket_of
from tchat.chat.ids import IdGenerator, id_time_ms
from tchat.chat.models import Message
from tchat.chat.sqlite import SqliteChatStore
from tchat.chat.store import ChatStore, StoreUnavailable

THIRTY_DAYS = 30 * 86400
KEYSPACE = "tchat_contract"


def cql_store(ttl_s: float = THIRTY_DAYS, **kw: object) -> CqlChatStore:
    return CqlChatStore([("127.0.0.1", 9042)], KEYSPACE, ttl_s, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "cql"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, services_answering: dict[str, str]
) -> AsyncIterator[ChatStore]:
    s: ChatStore
    if request.param == "sqlite":
        s = SqliteChatStore(tmp_path / "chat.sqlite3", ttl_s=THIRTY_DAYS)
    else:
        s = cql_store()
    await s.start()
    yield s
    await s.close()


def make(ids: IdGenerator, room: str, text: str, author: str = "alice") -> Message:
    mid = ids.next_id()
    return Message(mid, room, author, text, id_time_ms(mid) / 1000.0)


def room() -> str:
    return f"room-{uuid.uuid4().hex[:10]}"


async def test_append_then_history_newest_first(store: ChatStore) -> None:
    ids, r = IdGenerator(node=1), room()
    sent = [make(ids, r, f"m{i}") for i in range(120)]
    await asyncio.gather(*(store.append(m) for m in sent))
    page = await store.history(r, 50)
    assert [m.text for m in page] == [f"m{i}" for i in range(119, 69, -1)]
    assert page[0].author == "alice" and page[0].room == r
    assert abs(page[0].created_at - sent[-1].created_at) < 0.002


async def test_cursor_paging_walks_everything_once(store: ChatStore) -> None:
    ids, r = IdGenerator(node=2), room()
    for i in range(75):
        await store.append(make(ids, r, f"m{i}"))
    seen: list[str] = []
    before = None
    while True:
        page = await store.history(r, 20, before)
        seen.extend(m.text for m in page)
        if len(page) < 20:
            break
        before = page[-1].id
    assert seen == [f"m{i}" for i in range(74, -1, -1)]


async def test_skewed_buckets_still_give_the_newest(store: ChatStore) -> None:
    """Most recent rows all in one CQL bucket: the small per-bucket reads must fetch more."""
    ids, r = IdGenerator(node=9), room()
    older = [make(ids, r, f"old{i}") for i in range(40)]
    hot: list[Message] = []
    while len(hot) < 60:
        m = make(ids, r, f"hot{len(hot)}")
        if bucket_of(m.id, 8) == 3:
            hot.append(m)
    await asyncio.gather(*(store.append(m) for m in older + hot))
    page = await store.history(r, 50)
    assert [m.text for m in page] == [f"hot{i}" for i in range(59, 9, -1)]


async def test_rooms_are_separate_and_unknown_room_is_empty(store: ChatStore) -> None:
    ids, a, b = IdGenerator(node=3), room(), room()
    await store.append(make(ids, a, "in a"))
    assert [m.text for m in await store.history(b, 50)] == []
    assert [m.text for m in await store.history(a, 50)] == ["in a"]


async def test_unicode_round_trip(store: ChatStore) -> None:
    ids, r = IdGenerator(node=4), room()
    text = "héllo 👋 — 你好\nsecond line"
    await store.append(make(ids, r, text, author="zoë"))
    got = (await store.history(r, 1))[0]
    assert got.text == text and got.author == "zoë"


async def test_cql_rows_carry_thirty_day_ttl(services_answering: dict[str, str]) -> None:
    s = cql_store()
    await s.start()
    try:
        m = make(IdGenerator(node=5), room(), "ttl")
        await s.append(m)
        ttl = await s.ttl_of(m)
        assert ttl is not None and THIRTY_DAYS - 60 <= ttl <= THIRTY_DAYS
    finally:
        await s.close()


async def test_short_ttl_really_expires(tmp_path: Path, services_answering: dict[str, str]) -> None:
    for s in (SqliteChatStore(tmp_path / "ttl.sqlite3", ttl_s=2), cql_store(ttl_s=2)):
        await s.start()
        try:
            r = room()
            await s.append(make(IdGenerator(node=6), r, "short-lived"))
            assert len(await s.history(r, 10)) == 1
            await asyncio.sleep(2.0)  # never gone before its TTL; then gone soon after
            deadline = time.monotonic() + 30
            while await s.history(r, 10):
                assert time.monotonic() < deadline, f"{s.name}: row outlived its 2 s TTL by 30 s"
                await asyncio.sleep(0.25)
        finally:
            await s.close()


async def test_hot_room_spreads_over_buckets(services_answering: dict[str, str]) -> None:
    s = cql_store(buckets=8)
    await s.start()
    try:
        ids, r = IdGenerator(node=7), room()
        msgs = [make(ids, r, "x") for _ in range(800)]
        await asyncio.gather(*(s.append(m) for m in msgs))
        win = s.window_of(msgs[0].created_at)
        counts = [await s.count_partition(r, win, b) for b in range(8)]
        assert sum(counts) == 800
        assert min(counts) > 0  # every bucket takes part
        assert counts == [sum(1 for m in msgs if bucket_of(m.id, 8) == b) for b in range(8)]
    finally:
        await s.close()


async def test_unreachable_cql_fails_clearly_then_recovers(
    services_answering: dict[str, str],
) -> None:
    """A TCP proxy we control stands between the store and Cassandra; we cut it and restore it."""
    proxy = TcpProxy(("127.0.0.1", 9042))
    port = await proxy.start()
    proxy.refuse = True
    s = CqlChatStore([("127.0.0.1", port)], KEYSPACE, THIRTY_DAYS, connect_retry_s=0.5)
    started = time.monotonic()
    await asyncio.wait_for(s.start(), 30)
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await s.append(make(IdGenerator(node=8), room(), "nope"))
        with pytest.raises(StoreUnavailable):
            await s.history(room(), 10)
        proxy.refuse = False
        await s.wait_connected(30)
        r = room()
        await s.append(make(IdGenerator(node=8), r, "back"))
        assert [m.text for m in await s.history(r, 10)] == ["back"]
        assert time.monotonic() - started < 60
    finally:
        await s.close()
        await proxy.stop()


class TcpProxy:
    """A loopback TCP relay that can refuse or cut connections (a real network fault)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.refuse = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        up_r, up_w = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_w}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def cut(self) -> None:
        for w in self._writers:
            w.close()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server:
            self._server.close()
            await self._server.wait_closed()


# --- CQL node leases: an INSERT is an upsert, so two writers must never share a node ---


async def test_cql_writers_lease_distinct_node_numbers(
    services_answering: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tchat.chat.cql as cql

    monkeypatch.setattr(cql.secrets, "randbelow", lambda n: 7)  # both try node 7 first
    first, second = cql_store(), cql_store()
    await first.start()
    await second.start()
    try:
        a = await first.claim_node(lambda n: None)
        b = await second.claim_node(lambda n: None)
        assert a is not None and b is not None and a != b
        # The loser of the race wrote nothing under the winner's number.
        rows = await first._run(f"SELECT owner FROM {KEYSPACE}.chat_nodes WHERE node = %s", (a,))
        assert rows[0][0] == first._node_owner
    finally:
        await second.close()
    rows = await first._run(f"SELECT owner FROM {KEYSPACE}.chat_nodes WHERE node = %s", (b,))
    assert rows == []  # close() gave the number back
    await first.close()


async def test_cql_writer_moves_when_its_lease_was_lost(
    services_answering: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tchat.chat.cql as cql

    monkeypatch.setattr(cql, "NODE_RENEW_S", 0.05)
    store = cql_store()
    await store.start()
    moved: asyncio.Queue[int] = asyncio.Queue()
    node: int | None = None
    try:
        node = await store.claim_node(moved.put_nowait)
        assert node is not None
        # As after an outage longer than the lease: the row expired and another took it.
        await store._run(
            f"UPDATE {KEYSPACE}.chat_nodes SET owner = 'someone-else' WHERE node = %s", (node,)
        )
        new = await asyncio.wait_for(moved.get(), timeout=30)
        assert new != node and store._node == new
    finally:
        await store.close()
        await store_cleanup(node)


async def store_cleanup(node: int | None) -> None:
    s = cql_store()
    await s.start()
    await s._run(f"DELETE FROM {KEYSPACE}.chat_nodes WHERE node = %s", (node,))
    await s.close()
