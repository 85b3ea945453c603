"""T070 load generators: chat writers in several processes, against the store or bare driver.

Modes (same prepared INSERT, same concurrency, same processes):
- `store`  — paced writers through CqlChatStore.append (our store path, asyncio);
- `store-max` — the same path closed-loop (each writer sends its next message as soon
  as the previous one is acknowledged): the store path's ceiling;
- `driver` — a bare scylla-driver loop: each slot chains execute_async callbacks on
  the driver's own threads, no asyncio: what driver + database do on this box.
- `driver-paced` — the same bare driver, paced (writers x rate per second, evenly
  spread): the baseline the store path's latency is compared with in the same run
  (tests/performance/test_chat.py), as Cassandra's tails land in both alike.

Each process returns per-second completion counts, failures and a latency sample
(reservoir), merged by `run_writers`.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session
    from cassandra.query import PreparedStatement

    from tchat.chat.cql import CqlChatStore

SAMPLE_PER_PROCESS = 100_000


@dataclass
class WriterConfig:
    mode: str  # store | store-max | driver | driver-paced
    processes: int
    writers: int  # total, split over processes
    rate_per_writer: float  # msgs/s (ignored by the closed-loop modes)
    duration_s: float
    room: str
    contact_points: list[tuple[str, int]]
    keyspace: str
    buckets: int = 4
    start_at: float = 0.0  # wall-clock start shared by all processes


@dataclass
class WriterResult:
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    per_second: dict[int, int] = field(default_factory=dict)  # second since start → completions
    latencies_ms: list[float] = field(default_factory=list)  # reservoir: send → ack
    # the same samples timed from the scheduled send (paced mode; includes client lateness)
    scheduled_ms: list[float] = field(default_factory=list)
    seen: int = 0  # latencies offered to the reservoir
    cpu_s: float = 0.0

    def add_latency(self, ms: float, rng: random.Random, scheduled_ms: float | None = None) -> None:
        self.seen += 1
        if len(self.latencies_ms) < SAMPLE_PER_PROCESS:
            self.latencies_ms.append(ms)
            if scheduled_ms is not None:
                self.scheduled_ms.append(scheduled_ms)
        else:
            j = rng.randrange(self.seen)
            if j < SAMPLE_PER_PROCESS:
                self.latencies_ms[j] = ms
                if scheduled_ms is not None:
                    self.scheduled_ms[j] = scheduled_ms

    def merge(self, other: WriterResult) -> None:
        self.ok += other.ok
        self.failed += other.failed
        for k, v in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + v
        for s, n in other.per_second.items():
            self.per_second[s] = self.per_second.get(s, 0) + n
        self.latencies_ms.extend(other.latencies_ms)
        self.scheduled_ms.extend(other.scheduled_ms)
        self.seen += other.seen
        self.cpu_s += other.cpu_s


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def _process_main(cfg: WriterConfig, index: int, out: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    cpu0 = time.process_time()
    writers = _share(cfg.writers, cfg.processes, index)
    if cfg.mode in ("driver", "driver-paced"):
        result = _driver_loop(cfg, writers, index)
    else:
        result = asyncio.run(_store_loop(cfg, writers, index))
    result.cpu_s = time.process_time() - cpu0
    out.put(result)


async def _open_store(cfg: WriterConfig, writers: int) -> CqlChatStore:
    """A connected store sized for `writers` (one request in flight each)."""
    from tchat.chat.cql import CqlChatStore

    store = CqlChatStore(
        cfg.contact_points,
        cfg.keyspace,
        30 * 86400,
        buckets=cfg.buckets,
        max_in_flight=max(writers, 1),
    )
    await store.start()
    await store.wait_connected(30)
    gc.freeze()  # the driver's schema metadata is long-lived: keep it out of gen-2 scans
    return store


async def _store_loop(cfg: WriterConfig, writers: int, index: int) -> WriterResult:
    from tchat.chat.ids import IdGenerator, id_time_ms
    from tchat.chat.models import Message
    from tchat.chat.store import StoreUnavailable

    store = await _open_store(cfg, writers)
    ids = IdGenerator(node=index)
    result = WriterResult()
    rng = random.Random(index)
    end = cfg.start_at + cfg.duration_s
    closed_loop = cfg.mode == "store-max"

    async def writer(w: int) -> None:
        interval = 1.0 / cfg.rate_per_writer if not closed_loop else 0.0
        # Spread writers' phases so the offered load is smooth, not one burst per tick.
        next_at = cfg.start_at + (w / max(writers, 1)) * interval
        n = 0
        while True:
            scheduled = next_at
            if not closed_loop:
                delay = next_at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
            now = time.time()
            if now >= end:
                return
            mid = ids.next_id()
            msg = Message(mid, cfg.room, f"w{index}-{w}", f"load {n}", id_time_ms(mid) / 1000.0)
            n += 1
            # Two clocks: send → ack (the store's write latency, as the guide measures it)
            # and, paced, scheduled send → ack, which also counts a send delayed by a stall
            # (coordinated omission) or by the generator's own lateness.
            t0 = time.perf_counter()
            t_sched = min(scheduled, now)
            try:
                await store.append(msg)
            except StoreUnavailable as exc:
                result.failed += 1
                key = str(exc)[:80]
                result.errors[key] = result.errors.get(key, 0) + 1
                continue
            done = time.perf_counter()
            result.add_latency(
                (done - t0) * 1000.0,
                rng,
                None if closed_loop else (time.time() - t_sched) * 1000.0,
            )
            result.ok += 1
            sec = int(time.time() - cfg.start_at)
            result.per_second[sec] = result.per_second.get(sec, 0) + 1

    delay = cfg.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    await asyncio.gather(*(writer(w) for w in range(writers)))
    await store.close()
    return result


def _driver_session(cfg: WriterConfig) -> tuple[Cluster, Session, PreparedStatement]:
    """A bare driver session and the store's INSERT, prepared on it."""
    from cassandra.cluster import Cluster

    cluster = Cluster(
        [h for h, _ in cfg.contact_points], port=cfg.contact_points[0][1], protocol_version=4
    )
    session = cluster.connect()
    insert = session.prepare(
        f"INSERT INTO {cfg.keyspace}.messages (room, win, bucket, id, author, text, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
    )
    return cluster, session, insert


@dataclass
class _DriverTally:
    """The bare driver's completions: `done` runs on the driver's threads, hence the lock."""

    start_at: float
    in_flight: threading.Semaphore
    rng: random.Random
    result: WriterResult = field(default_factory=WriterResult)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self, t0: float, error: BaseException | None) -> None:
        result = self.result
        with self.lock:
            if error is None:
                result.ok += 1
                result.add_latency((time.perf_counter() - t0) * 1000.0, self.rng)
                sec = int(time.time() - self.start_at)
                result.per_second[sec] = result.per_second.get(sec, 0) + 1
            else:
                result.failed += 1
                key = type(error).__name__
                result.errors[key] = result.errors.get(key, 0) + 1
        self.in_flight.release()


def _driver_loop(cfg: WriterConfig, slots: int, index: int) -> WriterResult:
    """Bare driver: a plain loop issuing execute_async with at most `slots` in flight (a
    semaphore released by the driver's callbacks); no asyncio, no store code. Closed loop
    (`driver`: the ceiling) or paced at slots x rate_per_writer (`driver-paced`)."""
    from tchat.chat.cql import bucket_of
    from tchat.chat.ids import IdGenerator, id_time_ms

    cluster, session, insert = _driver_session(cfg)
    ids = IdGenerator(node=index)
    in_flight = threading.Semaphore(slots)
    tally = _DriverTally(cfg.start_at, in_flight, random.Random(index))
    done = tally.done
    end = cfg.start_at + cfg.duration_s

    delay = cfg.start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    interval = 1.0 / (slots * cfg.rate_per_writer) if cfg.mode == "driver-paced" else 0.0
    next_at = cfg.start_at
    n = 0
    while time.time() < end:
        if interval:
            delay = next_at - time.time()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
            if time.time() >= end:
                break
        in_flight.acquire()
        mid = ids.next_id()
        created_ms = id_time_ms(mid)
        params = (
            cfg.room,
            int(created_ms // 1000 // 86400),
            bucket_of(mid, cfg.buckets),
            mid,
            f"d{index}-{n % slots}",
            f"load {n}",
            created_ms,
            30 * 86400,
        )
        n += 1
        t0 = time.perf_counter()
        future = session.execute_async(insert, params)
        future.add_callbacks(lambda _, t0=t0: done(t0, None), lambda exc, t0=t0: done(t0, exc))
    for _ in range(slots):  # wait for the last requests
        in_flight.acquire(timeout=30)
    cluster.shutdown()
    return tally.result


def run_writers(cfg: WriterConfig, lead_s: float = 4.0) -> WriterResult:
    """Run cfg.processes writer processes starting together; merged result."""
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    cfg.start_at = time.time() + lead_s  # time for processes to import and connect
    procs = [
        ctx.Process(target=_process_main, args=(cfg, i, out), daemon=True)
        for i in range(cfg.processes)
    ]
    for p in procs:
        p.start()
    merged = WriterResult()
    deadline = time.time() + lead_s + cfg.duration_s + 120
    got = 0
    while got < len(procs) and time.time() < deadline:
        try:
            merged.merge(out.get(timeout=1.0))
            got += 1
        except Exception:
            if all(not p.is_alive() for p in procs) and out.empty():
                break
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    if got < len(procs):
        raise RuntimeError(f"only {got} of {len(procs)} writer processes reported")
    return merged
