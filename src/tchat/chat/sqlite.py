"""SQLite chat store: the embedded default (WAL, one writer thread, batched commits).

Writers enqueue; one writer task drains the queue into a single transaction per
batch on a dedicated thread and resolves every waiter only after COMMIT, so an
acknowledged message is on disk (WAL, synchronous=NORMAL: survives a process
crash). Reads use their own connection on another thread.

The queue is bounded (`max_queue`): past it `append` raises StoreBusy at once rather
than let waiting writes grow without limit. A message whose (room, id) is stored
already fails with IdTaken instead of being acknowledged and dropped.

Moderation (tchat.chat.moderation): a deleted message keeps its row with a tombstone
(deleted_by, deleted_at) and history skips it; a room's moderation state rows and
its log live in their own tables, written on the writer thread.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tchat.aio import cancel_and_wait
from tchat.chat.models import Message
from tchat.chat.moderation_models import LogEntry, StateRow, StoredMessage
from tchat.chat.store.base import IdTaken, StoreBusy, StoreUnavailable
from tchat.files import private_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
  room TEXT NOT NULL, id INTEGER NOT NULL, author TEXT NOT NULL, text TEXT NOT NULL,
  created_at REAL NOT NULL, expires_at REAL NOT NULL,
  deleted_by TEXT, deleted_at REAL, PRIMARY KEY (room, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_expiry ON messages (expires_at);
CREATE TABLE IF NOT EXISTS moderation_state (
  room TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, num INTEGER NOT NULL,
  until REAL, set_by TEXT NOT NULL, set_at REAL NOT NULL, version INTEGER NOT NULL,
  expires_at REAL, PRIMARY KEY (room, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS moderation_log (
  room TEXT NOT NULL, id INTEGER NOT NULL, actor TEXT NOT NULL, actor_role TEXT NOT NULL,
  action TEXT NOT NULL, target TEXT, detail TEXT NOT NULL, created_at REAL NOT NULL,
  expires_at REAL NOT NULL, PRIMARY KEY (room, id)
) WITHOUT ROWID;
"""
# Databases made before moderation get the tombstone columns (SQLite: ADD COLUMN is cheap).
_MIGRATIONS = {
    "deleted_by": "ALTER TABLE messages ADD COLUMN deleted_by TEXT",
    "deleted_at": "ALTER TABLE messages ADD COLUMN deleted_at REAL",
}
MAX_BATCH = 512
MAX_QUEUE = 10_000
_INSERT = (
    "INSERT INTO messages (room, id, author, text, created_at, expires_at) VALUES (?,?,?,?,?,?)"
)
Row = tuple[str, int, str, str, float, float]


class SqliteChatStore:
    name = "sqlite"

    def __init__(
        self,
        path: Path,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self._clock = clock
        self._queue: asyncio.Queue[tuple[Message, asyncio.Future[None]]] = asyncio.Queue(max_queue)
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="chat-sqlite-w")
        self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="chat-sqlite-r")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._purger: asyncio.Task[None] | None = None

    def _now(self) -> float:
        return self._clock()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    async def start(self) -> None:
        private_file(self.path)  # 0600: messages are not for other users of the host
        loop = asyncio.get_running_loop()

        def open_writer() -> sqlite3.Connection:
            conn = self._open()
            conn.executescript(_SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
            for column, statement in _MIGRATIONS.items():
                if column not in have:
                    conn.execute(statement)
            return conn

        self._wconn = await loop.run_in_executor(self._writer_thread, open_writer)
        self._rconn = await loop.run_in_executor(self._reader_thread, self._open)
        self._writer = asyncio.create_task(self._write_loop(), name="chat-sqlite-writer")
        self._purger = asyncio.create_task(self._purge_loop(), name="chat-sqlite-purge")

    async def close(self) -> None:
        # Let queued writes commit (bounded), then fail whatever is left: no waiter hangs.
        for _ in range(50):
            if self._queue.empty():
                break
            await asyncio.sleep(0.1)
        await cancel_and_wait(self._writer, self._purger)
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(StoreUnavailable("sqlite store closed"))
        loop = asyncio.get_running_loop()
        if self._wconn:
            await loop.run_in_executor(self._writer_thread, self._wconn.close)
        if self._rconn:
            await loop.run_in_executor(self._reader_thread, self._rconn.close)
        self._writer_thread.shutdown(wait=True)
        self._reader_thread.shutdown(wait=True)

    async def append(self, message: Message) -> None:
        if self._writer is None or self._writer.done():
            raise StoreUnavailable("sqlite store is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((message, done))
        except asyncio.QueueFull:
            raise StoreBusy(
                f"sqlite store busy: {self._queue.maxsize} writes waiting; retry shortly"
            ) from None
        await done

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows = [
                (m.room, m.id, m.author, m.text, m.created_at, m.created_at + self.ttl_s)
                for m, _ in batch
            ]
            job = loop.run_in_executor(self._writer_thread, self._insert, rows)
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                # Closing: the batch in flight still commits or fails; tell its waiters which.
                await _settle(job, batch)
                raise
            except Exception:
                pass  # _settle reports it to the batch's waiters; the loop goes on
            await _settle(job, batch)

    def _insert(self, rows: list[Row]) -> set[int]:
        """Commit the rows; returns the indexes of those whose (room, id) was taken
        (not stored). The batch goes in one statement; only when an id collides is it
        retried row by row to find which."""
        conn = self._wconn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            conn.execute("SAVEPOINT batch")
            try:
                conn.executemany(_INSERT, rows)
                taken: set[int] = set()
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO batch")
                taken = {
                    i
                    for i, row in enumerate(rows)
                    if conn.execute(_INSERT.replace("INSERT", "INSERT OR IGNORE"), row).rowcount
                    == 0
                }
            conn.execute("RELEASE batch")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return taken

    async def history(
        self, room: str, limit: int, before: int | None = None, after: int | None = None
    ) -> list[Message]:
        """Visible messages (not deleted, id > after), newest first, ids < before."""
        now = self._now()
        sql = (
            "SELECT id, room, author, text, created_at FROM messages WHERE room = ? "
            "AND expires_at > ? AND deleted_at IS NULL"
        )
        args: list[object] = [room, now]
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        if after is not None:
            sql += " AND id > ?"
            args.append(after)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [Message(*row) for row in await self._read(sql, args)]

    async def _read(self, sql: str, args: list[object]) -> list[Any]:
        if self._rconn is None:
            raise StoreUnavailable("sqlite store is not running")

        def query() -> list[Any]:
            assert self._rconn is not None
            return self._rconn.execute(sql, args).fetchall()

        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader_thread, query)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite read failed: {exc}") from None

    async def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """One statement over rows in one transaction, on the writer thread (between the
        message batches)."""
        if self._wconn is None or self._writer is None or self._writer.done():
            raise StoreUnavailable("sqlite store is not running")

        def write() -> None:
            assert self._wconn is not None
            self._wconn.execute("BEGIN")
            try:
                self._wconn.executemany(sql, rows)
                self._wconn.execute("COMMIT")
            except BaseException:
                self._wconn.execute("ROLLBACK")
                raise

        try:
            await asyncio.get_running_loop().run_in_executor(self._writer_thread, write)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite write failed: {exc}") from None

    # --- moderation (tchat.chat.moderation.ModerationStore) --------------------------------
    async def get_message(self, room: str, message_id: int) -> StoredMessage | None:
        rows = await self._read(
            "SELECT id, room, author, text, created_at, deleted_by, deleted_at FROM messages "
            "WHERE room = ? AND id = ? AND expires_at > ?",
            [room, message_id, self._now()],
        )
        if not rows:
            return None
        r = rows[0]
        return StoredMessage(Message(*r[:5]), r[5], r[6])

    async def tombstone(self, room: str, messages: list[StoredMessage], by: str, at: float) -> None:
        await self._write(
            "UPDATE messages SET deleted_by = ?, deleted_at = ? WHERE room = ? AND id = ?",
            [(by, at, room, s.message.id) for s in messages],
        )

    async def put_state(self, row: StateRow, ttl_s: int | None) -> None:
        expires = None if ttl_s is None else self._now() + ttl_s
        await self._write(
            "INSERT OR REPLACE INTO moderation_state VALUES (?,?,?,?,?,?,?,?,?)",
            [(row.room, row.key, row.kind, row.value, row.until, row.by, row.at, row.version,
              expires)],
        )  # fmt: skip

    async def load_state(self, room: str) -> list[StateRow]:
        rows = await self._read(
            "SELECT room, name, kind, num, until, set_by, set_at, version FROM moderation_state "
            "WHERE room = ? AND (expires_at IS NULL OR expires_at > ?)",
            [room, self._now()],
        )
        return [StateRow(*r) for r in rows]

    async def append_log(self, entry: LogEntry) -> None:
        await self._write(
            "INSERT OR REPLACE INTO moderation_log VALUES (?,?,?,?,?,?,?,?,?)",
            [(entry.room, entry.id, entry.actor, entry.actor_role, entry.action, entry.target,
              entry.detail_text(), entry.created_at, entry.created_at + self.ttl_s)],
        )  # fmt: skip

    async def read_log(self, room: str, limit: int, before: int | None) -> list[LogEntry]:
        sql = (
            "SELECT id, room, actor, actor_role, action, target, detail, created_at "
            "FROM moderation_log WHERE room = ? AND expires_at > ?"
        )
        args: list[object] = [room, self._now()]
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [
            LogEntry(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7])
            for r in await self._read(sql, args)
        ]

    async def purge_expired(self) -> int:
        now = self._now()

        def purge() -> int:
            assert self._wconn is not None
            n = self._wconn.execute("DELETE FROM messages WHERE expires_at <= ?", (now,)).rowcount
            self._wconn.execute("DELETE FROM moderation_log WHERE expires_at <= ?", (now,))
            self._wconn.execute(
                "DELETE FROM moderation_state WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,),
            )
            return n

        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, purge)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(3600)
            try:
                await self.purge_expired()
            except sqlite3.Error:
                pass  # retried next hour; reads filter expired rows anyway

    async def healthy(self) -> bool:
        return self._writer is not None and not self._writer.done()

    async def claim_node(self, moved: Callable[[int], None]) -> int | None:
        return None  # a colliding id fails its insert (IdTaken): no lease needed


async def _settle(
    job: asyncio.Future[set[int]], batch: list[tuple[Message, asyncio.Future[None]]]
) -> None:
    """Resolve a batch's waiters with the outcome of its (finished or finishing) commit."""
    taken: set[int] = set()
    try:
        taken = await job
        error: Exception | None = None
    except Exception as exc:  # any failure of the commit fails the batch, never the loop
        error = StoreUnavailable(f"sqlite write failed: {type(exc).__name__}: {exc}")
    for i, (message, fut) in enumerate(batch):
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        elif i in taken:
            fut.set_exception(IdTaken(f"message id {message.id} is taken in {message.room!r}"))
        else:
            fut.set_result(None)
