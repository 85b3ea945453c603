"""CQL chat store: ScyllaDB in production, Cassandra 5.0 on our machines (scylla-driver).

Data model (after Discord's messages-on-ScyllaDB design):

    messages ((room, win, bucket), id DESC) — win: time window of CHAT_WINDOW seconds
                                               bucket: hash(id) % CHAT_BUCKETS
    room_windows (room, win DESC)            — which windows of a room hold messages

One hot room spreads over CHAT_BUCKETS partitions per window, and a partition
never outlives its window, so partitions stay bounded in size and time. The
recent-N query reads the room's newest window index (one partition) and then the
buckets of the newest windows in parallel (single-partition reads), merging by id.
TTL: table default_time_to_live and an explicit `USING TTL` on every insert;
TimeWindowCompactionStrategy with 1-day windows drops whole expired SSTables.

The driver routes token-aware (shard-aware on ScyllaDB), statements are prepared,
requests are async with a bounded number in flight per process.

Moderation (tchat.chat.moderation):

    messages.deleted_by, deleted_at        — a deleted message's tombstone (the row stays;
                                              the update carries the row's remaining TTL)
    moderation_state ((room), name)         — a room's restrictions, slow mode, clear mark,
                                              roles: one partition read loads a room;
                                              timeouts are written USING TTL = their length
    moderation_log ((room), id DESC)        — every action, kept CHAT_TTL like messages

Message ids (tchat.chat.ids) carry a 10-bit node number. A CQL INSERT is an upsert, so
two writers drawing one id would silently overwrite an acknowledged message: without a
bus that hands out node numbers (Redis), each writer leases one in `chat_nodes` with a
lightweight transaction (INSERT … IF NOT EXISTS, renewed IF owner = us; once per process
and per NODE_RENEW_S, never per message).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from tchat.aio import cancel_and_wait
from tchat.chat.ids import NODE_BITS, id_time_ms
from tchat.chat.models import Message
from tchat.chat.moderation_models import LogEntry, StateRow, StoredMessage
from tchat.chat.store.base import StoreUnavailable
from tchat.config import Settings

log = logging.getLogger("tchat.chat.cql")

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
WINDOWS_CACHE_S = 5.0
MAX_BATCH = 64  # messages per single-partition batch
MAX_BATCH_BYTES = 16 * 1024  # text bytes per batch (Cassandra's default warning: 5 KiB)
NODE_LEASE_S = 60  # a node number outlives its holder by at most this long
NODE_RENEW_S = 15.0
NODE_COUNT = 1 << NODE_BITS


def bucket_of(message_id: int, buckets: int) -> int:
    """Spread ids evenly over buckets (Fibonacci hashing: low id bits are a sequence)."""
    return (((message_id * _GOLDEN) & _MASK64) >> 32) % buckets


def schema_statements(
    keyspace: str, ttl_s: int, replication_factor: int, window_s: float = 86400.0
) -> list[str]:
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
        f"{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}",
        f"""CREATE TABLE IF NOT EXISTS {keyspace}.messages (
              room text, win int, bucket int, id bigint,
              author text, text text, created_at timestamp,
              deleted_by text, deleted_at double,
              PRIMARY KEY ((room, win, bucket), id)
            ) WITH CLUSTERING ORDER BY (id DESC)
              AND default_time_to_live = {ttl_s}
              AND compaction = {{'class': 'TimeWindowCompactionStrategy',
                                 'compaction_window_unit': 'DAYS',
                                 'compaction_window_size': 1}}""",
        f"""CREATE TABLE IF NOT EXISTS {keyspace}.room_windows (
              room text, win int, PRIMARY KEY (room, win)
            ) WITH CLUSTERING ORDER BY (win DESC)
              AND default_time_to_live = {ttl_s + math.ceil(window_s)}""",
        f"""CREATE TABLE IF NOT EXISTS {keyspace}.moderation_state (
              room text, name text, kind text, num bigint, until double,
              set_by text, set_at double, version bigint,
              PRIMARY KEY (room, name)
            )""",
        f"""CREATE TABLE IF NOT EXISTS {keyspace}.moderation_log (
              room text, id bigint, actor text, actor_role text, action text,
              target text, detail text, created_at double,
              PRIMARY KEY (room, id)
            ) WITH CLUSTERING ORDER BY (id DESC)
              AND default_time_to_live = {ttl_s}""",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.chat_nodes (node int PRIMARY KEY, owner text)",
    ]


# Tables made before moderation get the tombstone columns.
MESSAGE_COLUMNS = {"deleted_by": "text", "deleted_at": "double"}


class CqlChatStore:
    name = "cql"

    def __init__(
        self,
        contact_points: Sequence[tuple[str, int]],
        keyspace: str,
        ttl_s: float,
        buckets: int = 4,
        window_s: float = 86400.0,
        max_in_flight: int = 512,
        replication_factor: int = 1,
        connect_retry_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.contact_points = list(contact_points)
        self.keyspace = keyspace
        self.ttl_s = max(1, int(ttl_s))
        self.buckets = buckets
        self.window_s = window_s
        self.replication_factor = replication_factor
        self.connect_retry_s = connect_retry_s
        self._clock = clock
        self._limit = asyncio.Semaphore(max_in_flight)
        self._cluster: Any = None
        self._session: Any = None
        self._insert: Any = None
        self._insert_window: Any = None
        self._select: Any = None
        self._select_buckets: Any = None
        self._select_buckets_before: Any = None
        self._select_before: Any = None
        self._select_windows: Any = None
        self._select_windows_before: Any = None
        self._get_message: Any = None
        self._tombstone: Any = None
        self._put_state: Any = None
        self._load_state: Any = None
        self._append_log: Any = None
        self._read_log: Any = None
        self._read_log_before: Any = None
        self._known_windows: set[tuple[str, int]] = set()
        self._windows_cache: dict[str, tuple[float, list[int]]] = {}
        # group commit: partition → queued (params, text size, waiter); partitions in flight
        self._pending: dict[tuple[str, int, int], list[tuple[Any, int, asyncio.Future[None]]]] = {}
        self._flushing: set[tuple[str, int, int]] = set()
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._connector: asyncio.Task[None] | None = None
        self._node: int | None = None
        self._node_owner = secrets.token_hex(8)
        self._node_keeper: asyncio.Task[None] | None = None
        self._node_wanted: Callable[[int], None] | None = None
        self._last_error = "not connected yet"
        self._connected = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> CqlChatStore:
        return cls(
            settings.cql_contact_points(),
            settings.scylladb_keyspace,
            settings.chat_ttl,
            buckets=settings.chat_buckets,
            window_s=settings.chat_window,
            max_in_flight=settings.cql_max_in_flight,
        )

    # --- connection -----------------------------------------------------------------
    async def start(self) -> None:
        self._connector = asyncio.create_task(self._connect_loop(), name="chat-cql-connect")
        # Give a reachable cluster a moment so a healthy start is ready at once.
        try:
            await asyncio.wait_for(self._connected.wait(), timeout=15.0)
        except TimeoutError:
            log.warning("cql store not reachable yet; retrying in background: %s", self._last_error)

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout=timeout_s)

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._session is None:
            try:
                await loop.run_in_executor(None, self._connect)
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(self.connect_retry_s)
        self._connected.set()
        log.info("cql store connected to %s keyspace=%s", self.contact_points, self.keyspace)
        await self._lease_soon()  # claim_node() came before the cluster answered

    def _new_cluster(self) -> Any:
        """A cluster object (not yet connected) for the contact points."""
        from cassandra import ConsistencyLevel
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import (
            DCAwareRoundRobinPolicy,
            ExponentialReconnectionPolicy,
            TokenAwarePolicy,
        )

        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            request_timeout=5.0,
        )
        ports = {port for _, port in self.contact_points}
        return Cluster(
            [host for host, _ in self.contact_points],
            port=ports.pop() if len(ports) == 1 else 9042,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=3,
            control_connection_timeout=3,
            protocol_version=4,
            reconnection_policy=ExponentialReconnectionPolicy(0.5, 5.0),
        )

    def _connect(self) -> None:
        cluster = self._new_cluster()
        try:
            session = cluster.connect()
            for statement in schema_statements(
                self.keyspace, self.ttl_s, self.replication_factor, self.window_s
            ):
                session.execute(statement, timeout=30)
            _add_missing_columns(session, self.keyspace)
            self._prepare_chat(session)
            self._prepare_moderation(session)
        except Exception:
            # a half-set-up cluster keeps its threads and connections: release them
            cluster.shutdown()
            raise
        self._cluster, self._session = cluster, session

    def _prepare_chat(self, session: Any) -> None:
        ks = self.keyspace
        self._insert = session.prepare(
            f"INSERT INTO {ks}.messages (room, win, bucket, id, author, text, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
        )
        self._insert_window = session.prepare(
            f"INSERT INTO {ks}.room_windows (room, win) VALUES (?, ?)"
        )
        cols = "id, author, text, deleted_at"
        where = f"FROM {ks}.messages WHERE room = ? AND win = ? AND bucket = ?"
        self._select = session.prepare(f"SELECT {cols} {where} LIMIT ?")
        self._select_before = session.prepare(f"SELECT {cols} {where} AND id < ? LIMIT ?")
        # The first round reads every bucket of a window in one request: the coordinator
        # does the single-partition reads, we pay one round trip instead of CHAT_BUCKETS.
        every = f"FROM {ks}.messages WHERE room = ? AND win = ? AND bucket IN ?"
        self._select_buckets = session.prepare(
            f"SELECT bucket, {cols} {every} PER PARTITION LIMIT ?"
        )
        self._select_buckets_before = session.prepare(
            f"SELECT bucket, {cols} {every} AND id < ? PER PARTITION LIMIT ?"
        )
        self._select_windows = session.prepare(
            f"SELECT win FROM {ks}.room_windows WHERE room = ? LIMIT ?"
        )
        self._select_windows_before = session.prepare(
            f"SELECT win FROM {ks}.room_windows WHERE room = ? AND win <= ? LIMIT ?"
        )

    def _prepare_moderation(self, session: Any) -> None:
        ks = self.keyspace
        key = "WHERE room = ? AND win = ? AND bucket = ? AND id = ?"
        self._get_message = session.prepare(
            f"SELECT author, text, deleted_by, deleted_at, TTL(text) AS ttl "
            f"FROM {ks}.messages {key}"
        )
        self._tombstone = session.prepare(
            f"UPDATE {ks}.messages USING TTL ? SET deleted_by = ?, deleted_at = ? {key}"
        )
        self._put_state = session.prepare(
            f"INSERT INTO {ks}.moderation_state "
            "(room, name, kind, num, until, set_by, set_at, version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
        )
        self._load_state = session.prepare(
            f"SELECT room, name, kind, num, until, set_by, set_at, version "
            f"FROM {ks}.moderation_state WHERE room = ?"
        )
        self._append_log = session.prepare(
            f"INSERT INTO {ks}.moderation_log "
            "(room, id, actor, actor_role, action, target, detail, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        log_cols = "id, room, actor, actor_role, action, target, detail, created_at"
        self._read_log = session.prepare(
            f"SELECT {log_cols} FROM {ks}.moderation_log WHERE room = ? LIMIT ?"
        )
        self._read_log_before = session.prepare(
            f"SELECT {log_cols} FROM {ks}.moderation_log WHERE room = ? AND id < ? LIMIT ?"
        )

    async def close(self) -> None:
        if self._connector:
            await cancel_and_wait(self._connector)
        if self._node_keeper:
            await cancel_and_wait(self._node_keeper)
            await self._release_node()
        if self._flush_tasks:  # let accepted writes finish (they fail fast if unreachable)
            await asyncio.gather(*self._flush_tasks, return_exceptions=True)
        if self._cluster is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._cluster.shutdown)
            self._cluster = self._session = None

    async def healthy(self) -> bool:
        if self._session is None:
            return False
        try:
            await self._run("SELECT release_version FROM system.local", ())
            return True
        except StoreUnavailable:
            return False

    # --- node lease (ids never collide, so an INSERT never overwrites) --------------------
    async def claim_node(self, moved: Callable[[int], None]) -> int | None:
        """Lease a free node number now or, if the cluster does not answer yet, as soon as
        it does (then moved(n)); append() refuses until then, so no message is written
        under a number another writer may hold."""
        self._node_wanted = moved
        if self._session is not None:
            try:
                await self._lease_any()
                self._node_keeper = asyncio.create_task(self._keep_node(), name="chat-cql-node")
                return self._node
            except StoreUnavailable as exc:
                log.warning("no chat node leased yet: %s", exc)
                self._connector = asyncio.create_task(self._lease_soon(), name="chat-cql-node")
        return None

    async def _lease_soon(self) -> None:
        while self._node_wanted is not None and self._node is None:
            try:
                await self._lease_any()
                assert self._node is not None
                self._node_wanted(self._node)
                self._node_keeper = asyncio.create_task(self._keep_node(), name="chat-cql-node")
            except StoreUnavailable as exc:
                self._last_error = str(exc)
                await asyncio.sleep(self.connect_retry_s)

    async def _lease_any(self) -> None:
        ks = self.keyspace
        start = secrets.randbelow(NODE_COUNT)
        for i in range(NODE_COUNT):
            node = (start + i) % NODE_COUNT
            rows = await self._run(
                f"INSERT INTO {ks}.chat_nodes (node, owner) VALUES (%s, %s) "
                f"IF NOT EXISTS USING TTL {NODE_LEASE_S}",
                (node, self._node_owner),
            )
            if rows and rows[0][0]:
                self._node = node
                log.info("chat ids: leased node %d in %s.chat_nodes", node, ks)
                return
        raise StoreUnavailable(f"all {NODE_COUNT} chat node numbers are leased")

    async def _keep_node(self) -> None:
        ks = self.keyspace
        while True:
            await asyncio.sleep(NODE_RENEW_S)
            try:
                if self._node is not None:
                    rows = await self._run(
                        f"UPDATE {ks}.chat_nodes USING TTL {NODE_LEASE_S} SET owner = %s "
                        "WHERE node = %s IF owner = %s",
                        (self._node_owner, self._node, self._node_owner),
                    )
                    if rows and rows[0][0]:
                        continue
                    # The lease ran out (store unreachable for NODE_LEASE_S) and another
                    # writer may hold the number now: stop writing under it.
                    log.warning("chat node %s lease lost; leasing another", self._node)
                    self._node = None
                await self._lease_any()
                assert self._node is not None and self._node_wanted is not None
                self._node_wanted(self._node)
            except StoreUnavailable as exc:
                log.warning("chat node lease not renewed: %s", exc)

    async def _release_node(self) -> None:
        if self._node is None:
            return
        try:
            await self._run(
                f"DELETE FROM {self.keyspace}.chat_nodes WHERE node = %s IF owner = %s",
                (self._node, self._node_owner),
            )
        except StoreUnavailable:
            pass  # the lease runs out by itself
        self._node = None

    # --- requests -------------------------------------------------------------------
    async def _run(self, statement: Any, params: Sequence[Any]) -> list[Any]:
        """Execute asynchronously on the driver; bounded in flight; errors → StoreUnavailable."""
        if self._session is None:
            raise StoreUnavailable(f"chat store (CQL) unreachable: {self._last_error}")
        async with self._limit:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[list[Any]] = loop.create_future()

            def ok(rows: Any) -> None:
                loop.call_soon_threadsafe(_resolve, done, rows)

            def failed(exc: BaseException) -> None:
                loop.call_soon_threadsafe(_reject, done, exc)

            try:
                self._session.execute_async(statement, params).add_callbacks(ok, failed)
            except Exception as exc:  # e.g. NoHostAvailable raised synchronously
                raise StoreUnavailable(
                    f"chat store (CQL) error: {type(exc).__name__}: {exc}"
                ) from None
            try:
                return await done
            except Exception as exc:
                raise StoreUnavailable(
                    f"chat store (CQL) error: {type(exc).__name__}: {exc}"
                ) from None

    def window_of(self, unix_s: float) -> int:
        return int(unix_s // self.window_s)

    async def append(self, message: Message) -> None:
        if self._node_wanted is not None and self._node is None:
            raise StoreUnavailable("chat store (CQL): no chat node number leased yet")
        win = self.window_of(message.created_at)
        bucket = bucket_of(message.id, self.buckets)
        params = (
            message.room,
            win,
            bucket,
            message.id,
            message.author,
            message.text,
            int(message.created_at * 1000),
            self.ttl_s,
        )
        insert = self._group_commit((message.room, win, bucket), params, len(message.text.encode()))
        key = (message.room, win)
        if key in self._known_windows:
            await insert
            return
        await asyncio.gather(insert, self._run(self._insert_window, key))
        if len(self._known_windows) > 200_000:
            self._known_windows.clear()
        self._known_windows.add(key)
        cached = self._windows_cache.get(message.room)
        if cached is not None and win not in cached[1]:
            cached[1].insert(0, win)
            cached[1].sort(reverse=True)

    async def _group_commit(
        self, partition: tuple[str, int, int], params: tuple[Any, ...], size: int
    ) -> None:
        """Write one message; concurrent messages of the same partition share a request.

        With nothing in flight for the partition the message goes out alone at once.
        Messages arriving while a write of that partition is in flight wait for it and
        then leave together as one UNLOGGED batch — single-partition, so Cassandra and
        ScyllaDB apply it as one mutation. No timer is added: a batch is only what
        piled up during the previous round trip, so the per-request cost of the driver
        is paid once per batch under load and latency is unchanged when idle.
        """
        if self._session is None:
            raise StoreUnavailable(f"chat store (CQL) unreachable: {self._last_error}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(partition, []).append((params, size, done))
        if partition not in self._flushing:
            self._flushing.add(partition)
            task = asyncio.create_task(self._flush(partition))
            self._flush_tasks.add(task)
            task.add_done_callback(self._flush_tasks.discard)
        await done

    async def _flush(self, partition: tuple[str, int, int]) -> None:
        from cassandra.query import BatchStatement, BatchType

        try:
            while queued := self._pending.pop(partition, None):
                batch: list[tuple[Any, int, asyncio.Future[None]]] = []
                total = 0
                for i, item in enumerate(queued):
                    if batch and (len(batch) >= MAX_BATCH or total + item[1] > MAX_BATCH_BYTES):
                        self._pending[partition] = queued[i:] + self._pending.get(partition, [])
                        break
                    batch.append(item)
                    total += item[1]
                if len(batch) == 1:
                    statement, values = self._insert, batch[0][0]
                else:
                    statement = BatchStatement(batch_type=BatchType.UNLOGGED)
                    for params, _, _ in batch:
                        statement.add(self._insert, params)
                    values = ()
                try:
                    await self._run(statement, values)
                except StoreUnavailable as exc:
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for _, _, done in batch:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._flushing.discard(partition)

    async def history(
        self, room: str, limit: int, before: int | None = None, after: int | None = None
    ) -> list[Message]:
        """Visible messages (not deleted, id > after), newest first, ids < before."""
        found: list[Message] = []
        horizon = self._clock() - self.ttl_s
        floor = id_time_ms(after) / 1000.0 if after is not None else None
        for win in await self._windows(room, before):
            if (win + 1) * self.window_s < horizon:
                break  # everything older has expired
            if floor is not None and (win + 1) * self.window_s <= floor:
                break  # everything older is cleared
            cursor = before
            while len(found) < limit:  # deleted rows are skipped: read on until enough
                need = limit - len(found)
                rows = await self._read_window(room, win, need, cursor)
                for message, deleted in rows:
                    if after is not None and message.id <= after:
                        return found
                    if not deleted:
                        found.append(message)
                if len(rows) < need:
                    break  # this window has nothing older
                cursor = rows[-1][0].id
            if len(found) >= limit:
                break
        return found[:limit]

    async def _windows(self, room: str, before: int | None) -> list[int]:
        """The room's windows holding messages, newest first (cached briefly: they change
        about once a window, and this process adds the ones it writes itself)."""
        if before is not None:  # paging back: read the index below the cursor, uncached
            before_win = self.window_of(id_time_ms(before) / 1000.0)
            rows = await self._run(self._select_windows_before, (room, before_win, 64))
            return [r.win for r in rows]
        now = self._clock()
        cached = self._windows_cache.get(room)
        if cached is None or now - cached[0] > WINDOWS_CACHE_S:
            rows = await self._run(self._select_windows, (room, 64))
            cached = (now, sorted((r.win for r in rows), reverse=True))
            if len(self._windows_cache) > 100_000:
                self._windows_cache.clear()
            if cached[1]:  # an empty room may get its first window from another process
                self._windows_cache[room] = cached
        return cached[1]

    async def _read_window(
        self, room: str, win: int, limit: int, before: int | None
    ) -> list[tuple[Message, bool]]:
        """Newest `limit` rows of one window: a small read per bucket, then more only from
        buckets that may still hold rows newer than the merged cut-off (rare)."""
        per_bucket = min(limit, -(-2 * limit // self.buckets) + 2)

        async def read(bucket: int, below: int | None, n: int) -> list[Any]:
            if below is None:
                return await self._run(self._select, (room, win, bucket, n))
            return await self._run(self._select_before, (room, win, bucket, below, n))

        buckets = list(range(self.buckets))
        if before is None:
            rows = await self._run(self._select_buckets, (room, win, buckets, per_bucket))
        else:
            rows = await self._run(
                self._select_buckets_before, (room, win, buckets, before, per_bucket)
            )
        pages: list[list[Any]] = [[] for _ in buckets]
        for row in rows:  # per partition, newest first
            pages[row.bucket].append(row)
        asked = [per_bucket] * self.buckets
        while True:
            merged = heapq.nlargest(limit, (row for page in pages for row in page), key=_row_id)
            cutoff = merged[-1].id if len(merged) >= limit else -1
            short = [
                b
                for b, page in enumerate(pages)
                if len(page) == asked[b] and page and page[-1].id > cutoff
            ]
            if not short:
                break
            more = await asyncio.gather(*(read(b, pages[b][-1].id, limit) for b in short))
            for b, rows in zip(short, more, strict=True):
                pages[b] = pages[b] + rows
                asked[b] += limit
        # created_at is the id's own time (ms), the exact value the writer stored
        return [
            (Message(r.id, room, r.author, r.text, id_time_ms(r.id) / 1000.0),
             r.deleted_at is not None)
            for r in merged
        ]  # fmt: skip

    # --- moderation (tchat.chat.moderation.ModerationStore) --------------------------------
    def _message_key(self, room: str, message_id: int) -> tuple[str, int, int, int] | None:
        win = self.window_of(id_time_ms(message_id) / 1000.0)
        if not -(2**31) <= win < 2**31:
            return None  # no window can hold it: not a message of ours
        return (room, win, bucket_of(message_id, self.buckets), message_id)

    async def get_message(self, room: str, message_id: int) -> StoredMessage | None:
        key = self._message_key(room, message_id)
        if key is None:
            return None
        rows = await self._run(self._get_message, key)
        if not rows or rows[0].text is None:
            return None
        r = rows[0]
        message = Message(message_id, room, r.author, r.text, id_time_ms(message_id) / 1000.0)
        return StoredMessage(message, r.deleted_by, r.deleted_at, r.ttl)

    async def tombstone(self, room: str, messages: list[StoredMessage], by: str, at: float) -> None:
        writes = []
        for stored in messages:
            key = self._message_key(room, stored.message.id)
            assert key is not None
            ttl = max(1, stored.ttl_s if stored.ttl_s is not None else self.ttl_s)
            writes.append(self._run(self._tombstone, (ttl, by, at, *key)))
        await asyncio.gather(*writes)

    async def put_state(self, row: StateRow, ttl_s: int | None) -> None:
        await self._run(
            self._put_state,
            (row.room, row.key, row.kind, row.value, row.until, row.by, row.at, row.version,
             max(1, ttl_s) if ttl_s is not None else 0),
        )  # fmt: skip

    async def load_state(self, room: str) -> list[StateRow]:
        rows = await self._run(self._load_state, (room,))
        return [
            StateRow(r.room, r.name, r.kind or "", r.num or 0, r.until, r.set_by or "",
                     r.set_at or 0.0, r.version or 0)
            for r in rows
        ]  # fmt: skip

    async def append_log(self, entry: LogEntry) -> None:
        await self._run(
            self._append_log,
            (entry.room, entry.id, entry.actor, entry.actor_role, entry.action, entry.target,
             entry.detail_text(), entry.created_at),
        )  # fmt: skip

    async def read_log(self, room: str, limit: int, before: int | None) -> list[LogEntry]:
        if before is None:
            rows = await self._run(self._read_log, (room, limit))
        else:
            rows = await self._run(self._read_log_before, (room, before, limit))
        return [
            LogEntry(r.id, r.room, r.actor, r.actor_role, r.action, r.target,
                     json.loads(r.detail or "{}"), r.created_at or 0.0)
            for r in rows
        ]  # fmt: skip

    async def count_partition(self, room: str, win: int, bucket: int) -> int:
        rows = await self._run(
            f"SELECT COUNT(*) AS n FROM {self.keyspace}.messages "
            "WHERE room = %s AND win = %s AND bucket = %s",
            (room, win, bucket),
        )
        return int(rows[0].n)

    async def ttl_of(self, message: Message) -> int | None:
        rows = await self._run(
            f"SELECT TTL(text) AS ttl FROM {self.keyspace}.messages "
            "WHERE room = %s AND win = %s AND bucket = %s AND id = %s",
            (
                message.room,
                self.window_of(message.created_at),
                bucket_of(message.id, self.buckets),
                message.id,
            ),
        )
        return int(rows[0].ttl) if rows and rows[0].ttl is not None else None


def _add_missing_columns(session: Any, keyspace: str) -> None:
    """ALTER a messages table made before moderation (CREATE IF NOT EXISTS keeps it as is)."""
    rows = session.execute(
        "SELECT column_name FROM system_schema.columns "
        "WHERE keyspace_name = %s AND table_name = 'messages'",
        (keyspace,),
    )
    have = {r.column_name for r in rows}
    for column, kind in MESSAGE_COLUMNS.items():
        if column in have:
            continue
        try:
            session.execute(f"ALTER TABLE {keyspace}.messages ADD {column} {kind}", timeout=30)
        except Exception as exc:  # another instance added it meanwhile
            if "exist" not in str(exc).lower() and "conflict" not in str(exc).lower():
                raise


def _row_id(row: Any) -> int:
    return int(row.id)


def _resolve(fut: asyncio.Future[list[Any]], rows: Any) -> None:
    if not fut.done():
        fut.set_result(list(rows) if rows is not None else [])


def _reject(fut: asyncio.Future[list[Any]], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
