"""T070 — chat on ScyllaDB/Cassandra: throughput, write latency, recent-50 under load,
TTL, partition distribution, the driver ceiling, and the WebSocket end-to-end path.

Profiles (env variables of the guide override either):
- ci:   NUM_WRITERS=50, MESSAGES_PER_SEC=10, TEST_DURATION_SECONDS=10, one writer
        process: 500 msg/s offered, where this 2-core box (Cassandra, load generator and
        reader on the same two cores) holds the guide's latency targets with about 2x
        margin (p99 write 1.9-2.8 ms, recent-50 p99 3.7-5.7 ms). At 1,000 msg/s they
        hold with a thin margin (p99 write 2.4-4.8 ms); the guide's "quick validation"
        (100 x 50 = 5,000 msg/s) reaches 5,000 msg/s with 100% success but p99 write
        7.1 ms and recent-50 p99 10.8 ms here (docs/chat.md).
        Throughput target = 95% of offered.
- full: NUM_WRITERS=1000, MESSAGES_PER_SEC=100, TEST_DURATION_SECONDS=60 (the guide's
        100K msg/s); throughput target = 95,000 msg/s. On a 2-core machine with
        Cassandra beside the load generator this fails honestly with what it reached.
CHAT_WRITER_PROCESSES sets the writer processes (ci: 1, full: CPU count);
CHAT_WARMUP_SECONDS the unmeasured warm-up before the run (10 s), after waiting
for Cassandra to finish compactions and flushes and the host CPU to fall below
25 % (what earlier suites leave winding down), at most 90 s.

Targets (the guide's: p99 write <= 5 ms, recent-50 p99 <= 10 ms, …) are reported with
their verdict; gates (what `make test` enforces, tchat.perf.results) are correctness —
every message acknowledged and counted back, partition spread, TTL — and latency
*relative* to the bare driver in the same seconds: during the measured run a paced
bare-driver writer (CHAT_BASELINE_MSG_S, default offered / 5, at most 200 msg/s, own
room, own process) and a raw-driver copy of the store's recent-50 request run beside
the store path, so Cassandra's tails (a JVM minutes after start, a compaction) land
in both and the ratio measures our store path, not the machine.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from tchat.auth import issue_token
from tchat.chat.cql import CqlChatStore
from tchat.chat.ids import IdGenerator, id_time_ms
from tchat.chat.models import Message
from tchat.config import parse_host_port
from tchat.perf.chat_load import WriterConfig, WriterResult, run_writers
from tchat.perf.results import SuiteResults, TestResult, percentile, ratio
from tchat.perf.server import serve_process

from .conftest import PROFILE, assert_targets, sized

pytestmark = pytest.mark.performance

HOSTS = [
    parse_host_port(h, 9042) for h in os.environ.get("SCYLLADB_HOST", "localhost:9042").split(",")
]
KEYSPACE = os.environ.get("SCYLLADB_KEYSPACE", "tchat")
WRITERS = int(sized("NUM_WRITERS", 50, 1000))
RATE = sized("MESSAGES_PER_SEC", 10, 100)
DURATION = sized("TEST_DURATION_SECONDS", 10, 60)
PROCESSES = int(sized("CHAT_WRITER_PROCESSES", 1, os.cpu_count() or 2))
WARMUP = sized("CHAT_WARMUP_SECONDS", 10, 10)
OFFERED = WRITERS * RATE
THROUGHPUT_TARGET = 95_000.0 if PROFILE == "full" else 0.95 * OFFERED
BUCKETS = int(os.environ.get("CHAT_BUCKETS", "4"))
BASELINE_MSG_S = sized("CHAT_BASELINE_MSG_S", min(OFFERED / 5, 200), min(OFFERED / 5, 200))
BASELINE_WRITERS = 10
# Gates relative to the bare driver in the same seconds (ratios; a baseline under
# RATIO_FLOOR_MS counts as that much: below it scheduling noise of either process
# dominates). Writes: the median write against the driver's (measured 0.9-2.2x in six CI
# runs) and the p99s, whose ratio one stall of either process moves by 3x (the
# driver's p99 is the 10th-worst of its 1,000 writes: 0.67-1.16x in five runs, 3.7x in
# a sixth with the same code on a quiet box); recent-50 ~1.1-1.7x (docs/performance.md).
WRITE_P50_VS_DRIVER = 3.0
WRITE_P99_VS_DRIVER = 6.0
RECENT50_P99_VS_DRIVER = 3.0
RATIO_FLOOR_MS = 1.0


def writer_config(
    mode: str,
    room: str,
    duration: float,
    writers: int = WRITERS,
    rate: float = RATE,
    processes: int = PROCESSES,
) -> WriterConfig:
    return WriterConfig(
        mode=mode,
        processes=processes,
        writers=writers,
        rate_per_writer=rate,
        duration_s=duration,
        room=room,
        contact_points=HOSTS,
        keyspace=KEYSPACE,
        buckets=BUCKETS,
    )


def new_store(**kw: Any) -> CqlChatStore:
    return CqlChatStore(HOSTS, KEYSPACE, kw.pop("ttl_s", 30 * 86400), buckets=BUCKETS, **kw)


def new_message(ids: IdGenerator, room: str, text: str) -> Message:
    mid = ids.next_id()
    return Message(mid, room, "perf", text, id_time_ms(mid) / 1000.0)


def throughput_series(result: WriterResult, duration: float) -> list[list[float]]:
    return [[s, float(result.per_second.get(s, 0))] for s in range(int(duration))]


@pytest.fixture(scope="module", autouse=True)
def _config(suite_results: SuiteResults) -> None:
    suite_results.config.update(
        {
            "SCYLLADB_HOST": ",".join(f"{h}:{p}" for h, p in HOSTS),
            "SCYLLADB_KEYSPACE": KEYSPACE,
            "NUM_WRITERS": WRITERS,
            "MESSAGES_PER_SEC": RATE,
            "TEST_DURATION_SECONDS": DURATION,
            "CHAT_WRITER_PROCESSES": PROCESSES,
            "CHAT_BUCKETS": BUCKETS,
            "CHAT_BASELINE_MSG_S": BASELINE_MSG_S,
            "engine": "Apache Cassandra 5.0 (ScyllaDB stand-in), one node, same host",
        }
    )


QUIET_CPU_PCT = 25.0  # host CPU (both cores) below which the machine counts as quiet


def wait_until_quiet(timeout_s: float = 90.0) -> float:
    """Wait until Cassandra runs no compaction or flush (e.g. after the integration tests'
    schema churn) and the host's CPU is mostly idle (what earlier suites left winding
    down: servers, FFmpeg, browsers), as one would before any benchmark; returns the
    seconds waited. The tail targets react to anything else on two cores."""
    import psutil
    from cassandra.cluster import Cluster

    cluster = Cluster([h for h, _ in HOSTS], port=HOSTS[0][1])
    session = cluster.connect()
    started = time.monotonic()
    quiet_polls = 0
    psutil.cpu_percent(interval=None)  # starts the host CPU window
    try:
        while quiet_polls < 3 and time.monotonic() - started < timeout_s:
            rows = session.execute(
                "SELECT name, active_tasks, pending_tasks FROM system_views.thread_pools"
            )
            busy = sum(
                r.active_tasks + r.pending_tasks
                for r in rows
                if r.name in ("CompactionExecutor", "MemtableFlushWriter", "MemtablePostFlush")
            )
            time.sleep(0.5)
            idle = psutil.cpu_percent(interval=None) < QUIET_CPU_PCT
            quiet_polls = quiet_polls + 1 if busy == 0 and idle else 0
    finally:
        cluster.shutdown()
    return time.monotonic() - started


class RawReads:
    """The store's recent-50 request (every bucket of the newest window, one round trip,
    PER PARTITION LIMIT as CqlChatStore reads it) on the bare driver: the baseline of
    the recent-50 gate, read in the same seconds as the store's history()."""

    def __init__(self) -> None:
        from cassandra.cluster import Cluster

        self.cluster = Cluster([h for h, _ in HOSTS], port=HOSTS[0][1], protocol_version=4)
        self.session = self.cluster.connect()
        self.select = self.session.prepare(
            f"SELECT bucket, id, author, text FROM {KEYSPACE}.messages "
            "WHERE room = ? AND win = ? AND bucket IN ? PER PARTITION LIMIT ?"
        )
        self.per_bucket = min(50, -(-2 * 50 // BUCKETS) + 2)

    async def read(self, room: str, win: int) -> list[Any]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()

        def ok(rows: Any) -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(list(rows)))

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_exception(exc))

        params = (room, win, list(range(BUCKETS)), self.per_bucket)
        self.session.execute_async(self.select, params).add_callbacks(ok, failed)
        return await done

    def close(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def load_run(suite_results: SuiteResults) -> Iterator[dict[str, Any]]:
    """One paced store-path run of the profile, with a recent-50 reader on the hot room;
    beside it, in the same seconds, the bare-driver baselines of the relative gates."""
    room = f"hot-{uuid.uuid4().hex[:8]}"
    cfg = writer_config("store", room, DURATION)
    base_cfg = writer_config(
        "driver-paced",
        f"base-{uuid.uuid4().hex[:8]}",  # its own room: the hot room's rows stay ours
        DURATION,
        writers=BASELINE_WRITERS,
        rate=BASELINE_MSG_S / BASELINE_WRITERS,
        processes=1,
    )
    reads_ms: list[float] = []
    raw_reads_ms: list[float] = []
    read_errors = 0

    warm_room = f"warm-{uuid.uuid4().hex[:8]}"
    target = [warm_room]  # the reader reads the warm-up room first, then the hot room

    async def reader(stop: asyncio.Event) -> None:
        nonlocal read_errors
        store = new_store()
        await store.start()
        await store.wait_connected(30)
        raw = await asyncio.get_running_loop().run_in_executor(None, RawReads)
        gc.freeze()  # as the server does after start-up (app.py)
        while not stop.is_set():
            # counted only once the measured writers run (cfg.start_at is set by run_writers)
            counted = target[0] == room and 0 < cfg.start_at <= time.time()
            t0 = time.perf_counter()
            try:
                await store.history(target[0], 50)
                if counted:
                    reads_ms.append((time.perf_counter() - t0) * 1000.0)
            except Exception:
                if counted:
                    read_errors += 1
            await asyncio.sleep(0.005)
            t0 = time.perf_counter()
            try:
                await raw.read(target[0], store.window_of(time.time()))
                if counted:
                    raw_reads_ms.append((time.perf_counter() - t0) * 1000.0)
            except Exception:
                if counted:
                    read_errors += 1
            await asyncio.sleep(0.005)
        raw.close()
        await store.close()

    suite_results.config["cassandra_quiesce_s"] = round(wait_until_quiet(), 1)

    async def run() -> tuple[WriterResult, WriterResult]:
        # Warm-up (not measured): JIT of a freshly started Cassandra on both the write and
        # the read path, driver pools, prepared statements — a closed-loop burst, then the
        # paced load, with the reader running. Standard benchmark practice.
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.create_task(reader(stop))
        try:
            for mode, seconds in (("store-max", WARMUP / 2), ("store", WARMUP / 2)):
                warm = writer_config(mode, warm_room, seconds)
                await loop.run_in_executor(None, run_writers, warm)
            target[0] = room
            measured, baseline = await asyncio.gather(
                loop.run_in_executor(None, run_writers, cfg),
                loop.run_in_executor(None, run_writers, base_cfg),
            )
            return measured, baseline
        finally:
            stop.set()
            await task

    print(
        f"\nchat load: {WRITERS} writers x {RATE:g} msg/s for {DURATION:g}s "
        f"in {PROCESSES} processes (offered {OFFERED:,.0f} msg/s)",
        file=sys.stderr,
    )
    result, baseline = asyncio.run(run())
    yield {
        "room": room,
        "result": result,
        "baseline": baseline,
        "reads_ms": reads_ms,
        "raw_reads_ms": raw_reads_ms,
        "read_errors": read_errors,
    }


def TestChatThroughput100K(load_run: dict[str, Any], record: TestResult) -> None:
    result: WriterResult = load_run["result"]
    attempted = result.ok + result.failed
    # Seconds fully inside the run; the last partial second is excluded.
    steady = [result.per_second.get(s, 0) for s in range(int(DURATION))]
    record.metrics = {
        "offered_msg_s": OFFERED,
        "throughput_msg_s": round(result.ok / DURATION, 1),
        "throughput_min_1s_msg_s": float(min(steady)) if steady else 0.0,
        "success_rate_pct": round(100.0 * result.ok / attempted, 4) if attempted else 0.0,
        "messages_ok": result.ok,
        "messages_failed": result.failed,
        "writer_cpu_s": round(result.cpu_s, 2),
    }
    record.metrics["throughput_vs_offered_pct"] = round(100.0 * result.ok / DURATION / OFFERED, 2)
    record.targets = {"throughput_msg_s": f">= {THROUGHPUT_TARGET:g}", "success_rate_pct": "== 100"}
    record.gates = {"success_rate_pct": "== 100", "messages_failed": "== 0"}
    if PROFILE == "ci":  # sized to hold on any 2-core box; the full profile reports its reach
        record.gates["throughput_vs_offered_pct"] = ">= 95"
    record.series = {"throughput_msg_s": throughput_series(result, DURATION)}
    if result.errors:
        record.notes.append(f"errors: {json.dumps(result.errors)[:500]}")
    assert_targets(record)


def TestChatWriteLatency(load_run: dict[str, Any], record: TestResult) -> None:
    result: WriterResult = load_run["result"]
    base: WriterResult = load_run["baseline"]
    lat, sched = result.latencies_ms, result.scheduled_ms
    p99 = percentile(lat, 99)
    driver_p99 = percentile(base.latencies_ms, 99)
    record.metrics = {
        "p50_write_ms": _r(percentile(lat, 50)),
        "p99_write_ms": _r(p99),
        "p999_write_ms": _r(percentile(lat, 99.9)),
        "p99_write_from_schedule_ms": _r(percentile(sched, 99)),
        "p999_write_from_schedule_ms": _r(percentile(sched, 99.9)),
        "latency_samples": len(lat),
        "driver_p50_write_ms": _r(percentile(base.latencies_ms, 50)),
        "driver_p99_write_ms": _r(driver_p99),
        "driver_write_samples": len(base.latencies_ms),
        "driver_write_failed": base.failed,
        "p50_write_vs_driver": ratio(
            percentile(lat, 50), percentile(base.latencies_ms, 50), RATIO_FLOOR_MS
        ),
        "p99_write_vs_driver": ratio(p99, driver_p99, RATIO_FLOOR_MS),
    }
    record.targets = {"p99_write_ms": "<= 5"}
    record.gates = {
        "p50_write_vs_driver": f"<= {WRITE_P50_VS_DRIVER:g}",
        "p99_write_vs_driver": f"<= {WRITE_P99_VS_DRIVER:g}",
        "driver_write_failed": "== 0",
    }
    record.notes.append(
        f"driver_* = a paced bare scylla-driver writer ({BASELINE_MSG_S:g} msg/s, own room and "
        "process) in the same seconds; p50/p99_write_vs_driver = p50/p99_write_ms / "
        f"max(driver_p50/p99_write_ms, {RATIO_FLOOR_MS:g} ms), the CI gates."
    )
    record.notes.append(
        "p*_write_ms = CqlChatStore.append() call to acknowledgement (the store's write "
        "latency, as the guide measures it); *_from_schedule_ms = the same writes timed from "
        "their scheduled send (adds any send delayed by a stall or by the generator's own "
        "lateness: the coordinated-omission view). Both from the writer processes during "
        "the throughput run."
    )
    assert_targets(record)


def TestChatRecentQueryLatency(load_run: dict[str, Any], record: TestResult) -> None:
    reads: list[float] = load_run["reads_ms"]
    raw: list[float] = load_run["raw_reads_ms"]
    p99, raw_p99 = percentile(reads, 99), percentile(raw, 99)
    record.metrics = {
        "recent50_p50_ms": _r(percentile(reads, 50)),
        "recent50_p99_ms": _r(p99),
        "recent50_queries": len(reads),
        "recent50_errors": load_run["read_errors"],
        "driver_recent50_p50_ms": _r(percentile(raw, 50)),
        "driver_recent50_p99_ms": _r(raw_p99),
        "recent50_vs_driver": ratio(p99, raw_p99, RATIO_FLOOR_MS),
    }
    record.targets = {"recent50_p99_ms": "<= 10", "recent50_errors": "== 0"}
    record.gates = {
        "recent50_vs_driver": f"<= {RECENT50_P99_VS_DRIVER:g}",
        "recent50_errors": "== 0",
    }
    record.notes.append(
        "history(room, 50) on the hot room while the writers run, alternating (5 ms apart) "
        "with driver_recent50 = the same CQL request (every bucket of the newest window, "
        "PER PARTITION LIMIT) on the bare driver; recent50_vs_driver = recent50_p99_ms / "
        f"max(driver_recent50_p99_ms, {RATIO_FLOOR_MS:g} ms), the CI gate."
    )
    assert_targets(record)


def TestChatPartitionDistribution(load_run: dict[str, Any], record: TestResult) -> None:
    room, result = load_run["room"], load_run["result"]

    async def count() -> list[int]:
        store = new_store()
        await store.start()
        try:
            windows = {store.window_of(time.time() - d) for d in (0.0, DURATION + 30)}
            counts = [0] * BUCKETS
            for win in windows:
                for b in range(BUCKETS):
                    counts[b] += await store.count_partition(room, win, b)
            return counts
        finally:
            await store.close()

    counts = asyncio.run(count())
    mean = statistics.mean(counts)
    record.metrics = {
        "partition_stddev_pct": round(100.0 * statistics.pstdev(counts) / mean, 3)
        if mean
        else None,
        "partitions": BUCKETS,
        "rows_counted": sum(counts),
        "rows_acknowledged": result.ok,
        "rows_acknowledged_not_counted": result.ok - sum(counts),
    }
    record.targets = {"partition_stddev_pct": "<= 10"}
    # every acknowledged message is in the table, spread over the buckets
    record.gates = {
        "rows_acknowledged_not_counted": "== 0",
        "rows_counted": f"== {result.ok}",
        "partition_stddev_pct": "<= 10",
    }
    record.series = {"rows_per_bucket": [[b, float(c)] for b, c in enumerate(counts)]}
    assert_targets(record)


def TestChatTTL(record: TestResult) -> None:
    async def run() -> tuple[int | None, int, int]:
        store, short = new_store(), new_store(ttl_s=2)
        await store.start()
        await short.start()
        try:
            ids = IdGenerator(node=900)
            room = f"ttl-{uuid.uuid4().hex[:8]}"
            m = new_message(ids, room, "kept 30 days")
            await store.append(m)
            ttl = await store.ttl_of(m)
            s = new_message(ids, room + "-short", "short")
            await short.append(s)
            before = len(await short.history(s.room, 10))
            await asyncio.sleep(3.0)
            after = len(await short.history(s.room, 10))
            return ttl, before, after
        finally:
            await store.close()
            await short.close()

    ttl, before, after = asyncio.run(run())
    record.metrics = {
        "row_ttl_s": ttl,
        "short_ttl_rows_before": before,
        "short_ttl_rows_after": after,
    }
    record.gates = {  # correctness: the 30-day TTL is set and a TTL really expires
        "row_ttl_s": ">= 2591900",
        "short_ttl_rows_before": "== 1",
        "short_ttl_rows_after": "== 0",
    }
    assert_targets(record)


def TestChatDriverCeiling(record: TestResult) -> None:
    """Bare driver vs our store path at the same concurrency, closed loop, same processes."""
    duration = min(DURATION, 10.0)
    driver = run_writers(writer_config("driver", f"ceil-{uuid.uuid4().hex[:8]}", duration))
    store = run_writers(writer_config("store-max", f"smax-{uuid.uuid4().hex[:8]}", duration))
    ceiling = driver.ok / duration
    ours = store.ok / duration
    record.metrics = {
        "driver_ceiling_msg_s": round(ceiling, 1),
        "store_max_msg_s": round(ours, 1),
        "store_vs_ceiling_pct": round(100.0 * ours / ceiling, 1) if ceiling else None,
        "driver_p99_write_ms": _r(percentile(driver.latencies_ms, 99)),
        "store_max_p99_write_ms": _r(percentile(store.latencies_ms, 99)),
        "driver_failed": driver.failed,
        "store_max_failed": store.failed,
        "driver_cpu_us_per_msg": round(1e6 * driver.cpu_s / max(driver.ok, 1), 1),
        "store_cpu_us_per_msg": round(1e6 * store.cpu_s / max(store.ok, 1), 1),
    }
    # relative (store path vs bare driver, same box, same concurrency, back to back) and
    # correctness: gates
    record.gates = {
        "store_vs_ceiling_pct": ">= 50",
        "driver_failed": "== 0",
        "store_max_failed": "== 0",
    }
    record.series = {
        "driver_msg_s": throughput_series(driver, duration),
        "store_max_msg_s": throughput_series(store, duration),
    }
    record.notes.append(
        f"{WRITERS} concurrent requests over {PROCESSES} processes, closed loop, "
        f"{duration:g}s each; driver = execute_async callback chains, no asyncio"
    )
    assert_targets(record)


# --- end to end: WebSocket posters → tchat serve → Cassandra → fan-out → listeners -----------
# One server process fans out ~20K frames/s here in real time (p99 25 ms); at 40K/s every
# message still arrives but p50 is ~0.5 s: the full profile stays at the real-time size.
E2E_POSTERS = int(sized("E2E_POSTERS", 20, 20))
E2E_LISTENERS = int(sized("E2E_LISTENERS", 20, 100))
E2E_RATE = sized("E2E_MESSAGES_PER_SEC", 10, 10)
SECRET = "perf-secret-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"CHAT_STORE": "cql", "CHAT_RATE_PER_S": "1000", "CHAT_BURST": "1000"}
    with serve_process(tmp_path_factory.mktemp("e2e"), SECRET, env) as (_, url):
        yield url


def TestChatEndToEnd(chat_server: str, record: TestResult) -> None:
    room = f"e2e-{uuid.uuid4().hex[:8]}"
    ws = chat_server.replace("http://", "ws://") + f"/rooms/{room}/ws"
    duration = min(DURATION, 10.0)
    latencies: list[float] = []
    received = [0]
    acked = [0]
    errors: list[str] = []
    closed: list[str] = []  # sockets the server closed (e.g. 1013: listener too slow)

    async def listener(joined: list[int], stop: asyncio.Event) -> None:
        try:
            async with websockets.connect(ws, max_queue=None) as conn:
                await conn.recv()  # hello
                joined[0] += 1
                while not stop.is_set():
                    try:
                        raw = await asyncio.wait_for(conn.recv(), 0.5)
                    except TimeoutError:
                        continue
                    now = time.time()
                    frame = json.loads(raw)
                    if frame["type"] == "message":
                        sent = float(frame["message"]["text"].split(" ", 1)[0])
                        latencies.append((now - sent) * 1000.0)
                        received[0] += 1
        except (websockets.ConnectionClosed, OSError) as exc:
            closed.append(f"listener: {exc}")

    async def poster(i: int, start: float) -> None:
        token = issue_token(SECRET, room, "chat", f"poster-{i}")
        try:
            async with websockets.connect(ws + f"?token={token}", max_queue=None) as conn:
                await conn.recv()  # hello
                interval = 1.0 / E2E_RATE
                next_at = start + (i / E2E_POSTERS) * interval
                pending = 0
                while next_at < start + duration:
                    await asyncio.sleep(max(0.0, next_at - time.time()))
                    next_at += interval
                    text = f"{time.time():.6f} p{i}"
                    await conn.send(json.dumps({"type": "post", "text": text}))
                    pending += 1
                while pending:  # every post is answered: ack (stored) or error
                    frame = json.loads(await asyncio.wait_for(conn.recv(), 10))
                    if frame["type"] == "ack":
                        acked[0] += 1
                        pending -= 1
                    elif frame["type"] == "error":
                        errors.append(frame["code"])
                        pending -= 1
        except (websockets.ConnectionClosed, OSError, TimeoutError) as exc:
            closed.append(f"poster: {type(exc).__name__}: {exc}")

    async def run() -> None:
        stop, joined = asyncio.Event(), [0]
        listeners = [asyncio.create_task(listener(joined, stop)) for _ in range(E2E_LISTENERS)]
        async with asyncio.timeout(30):
            while joined[0] + len(closed) < E2E_LISTENERS:
                await asyncio.sleep(0.05)
        start = time.time() + 0.5
        posters = [asyncio.create_task(poster(i, start)) for i in range(E2E_POSTERS)]
        _, late = await asyncio.wait(posters, timeout=duration + 30)
        for task in late:  # an overloaded server: count it, report it, do not hang
            task.cancel()
            closed.append("poster: no answer to every post within 30 s after the run")
        deadline = time.time() + 10
        while received[0] < acked[0] * E2E_LISTENERS and time.time() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*listeners)

    asyncio.run(run())
    expected = acked[0] * E2E_LISTENERS
    record.metrics = {
        "e2e_posted": acked[0],
        "e2e_expected_deliveries": expected,
        "e2e_delivered": received[0],
        "e2e_delivered_msg_s": round(received[0] / duration, 1),
        "e2e_delivery_pct": round(100.0 * received[0] / expected, 3) if expected else None,
        "e2e_p50_ms": _r(percentile(latencies, 50)),
        "e2e_p99_ms": _r(percentile(latencies, 99)),
        "e2e_post_errors": len(errors),
        "e2e_sockets_closed": len(closed),
    }
    record.gates = {
        "e2e_delivery_pct": "== 100",
        "e2e_post_errors": "== 0",
        "e2e_sockets_closed": "== 0",
    }
    record.targets = {"e2e_p99_ms": "<= 250"}
    record.notes.append(
        f"{E2E_POSTERS} posters x {E2E_RATE:g} msg/s, {E2E_LISTENERS} listeners (every poster "
        f"socket also receives the room), {duration:g}s; one tchat serve with CHAT_STORE=cql; "
        "latency = poster send → listener receive (one host, one clock)"
    )
    if closed:
        record.notes.append(f"closed sockets (first 3): {closed[:3]}")
    assert_targets(record)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- moderation: what the post path's checks cost; enforcement across instances -------------
MOD_SLICES = int(sized("CHAT_MODERATION_SLICES", 20, 40))  # per side, interleaved A B B A …
MOD_SLICE_S = sized("CHAT_MODERATION_SLICE_SECONDS", 0.5, 0.5)
MOD_PACED_S = sized("CHAT_MODERATION_PACED_SECONDS", 20, 60)
MOD_TRIALS = int(sized("CHAT_MODERATION_TRIALS", 20, 50))


def _bounds(record: TestResult, gates: dict[str, str], targets: dict[str, str]) -> None:
    """`gates` fail every run (CI included), `targets` are the reported verdicts."""
    record.gates.update(gates)
    record.targets.update(targets)


def TestChatModerationCost(record: TestResult) -> None:
    """The write path (ChatService.post → CQL store → bus) with the moderation checks on
    and off, side by side in one run: two services on the same store, bus and connections,
    one with the checks and one without. Throughput: closed-loop slices of 0.5 s through
    one or the other, interleaved A B B A; latency: one paced run in which each message
    goes through a randomly chosen side, so both sides see the same moments of the box."""
    import random

    from tchat.bus.memory import MemoryBus
    from tchat.chat.moderation import Moderation
    from tchat.chat.moderation_models import RESTRICT, ROLE, StateRow
    from tchat.chat.service import ChatService

    room = f"mod-{uuid.uuid4().hex[:8]}"
    writers = WRITERS
    order = [i % 4 in (1, 2) for i in range(2 * MOD_SLICES)]  # checks on? A B B A A B B A …
    quiesce_s = wait_until_quiet(timeout_s=30.0)

    async def run() -> dict[str, Any]:
        store = new_store(max_in_flight=max(writers, 64))
        bus = MemoryBus()
        checked = ChatService(store, bus, 1e9, 10**9, node_id=901)
        await checked.start()
        await store.wait_connected(30)
        # the same store, bus and driver connections, without the checks (not started:
        # its store and bus are the ones started above)
        unchecked = ChatService(store, bus, 1e9, 10**9, node_id=902, moderation=False)
        side = {True: checked, False: unchecked}
        moderation = checked.moderation
        assert isinstance(moderation, Moderation)
        # a room with a history of moderation: 1,000 bans, 1,000 timeouts, 10 moderators
        st = await moderation.state(room)
        now = time.time()
        for i in range(1000):
            st.apply(StateRow(room, RESTRICT + f"banned{i}", "ban", 0, None, "host", now, i + 1))
            st.apply(
                StateRow(room, RESTRICT + f"timed{i}", "timeout", 600, now + 600, "host", now, i)
            )
        for i in range(10):
            st.apply(StateRow(room, ROLE + f"mod{i}", "moderator", 0, None, "host", now, i))
        gc.freeze()

        async def closed_slice(on: bool, seconds: float) -> tuple[int, float, float]:
            service = side[on]
            end = time.perf_counter() + seconds
            done = [0]

            async def writer(w: int) -> None:
                while time.perf_counter() < end:
                    await service.post(room, f"w{w}", "moderation cost")
                    done[0] += 1

            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(writer(w) for w in range(writers)))
            return done[0], time.perf_counter() - t0, time.process_time() - cpu0

        async def paced(seconds: float, rng: random.Random) -> dict[bool, list[float]]:
            lat: dict[bool, list[float]] = {True: [], False: []}
            start = time.perf_counter() + 0.05
            interval = 1.0 / RATE

            async def writer(w: int) -> None:
                next_at = start + (w / writers) * interval
                while next_at < start + seconds:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    next_at += interval
                    on = rng.random() < 0.5
                    t0 = time.perf_counter()
                    await side[on].post(room, f"w{w}", "moderation cost")
                    lat[on].append((time.perf_counter() - t0) * 1000.0)

            await asyncio.gather(*(writer(w) for w in range(writers)))
            return lat

        try:
            for on in (False, True):  # warm-up, not measured
                await closed_slice(on, 1.0)
            await paced(2.0, random.Random(0))
            totals = {on: [0, 0.0, 0.0] for on in (False, True)}  # messages, seconds, cpu
            per_slice: dict[bool, list[float]] = {False: [], True: []}
            for on in order:
                n, elapsed, cpu = await closed_slice(on, MOD_SLICE_S)
                totals[on][0] += n
                totals[on][1] += elapsed
                totals[on][2] += cpu
                per_slice[on].append(n / elapsed)
            lat = await paced(MOD_PACED_S, random.Random(1))
            # the check itself, in a tight loop (CPU time per call, median of 5 repeats)
            per_call = []
            for _ in range(5):
                cpu0 = time.process_time()
                for i in range(20_000):
                    await moderation.check_post(room, f"w{i % writers}", "chat")
                per_call.append((time.process_time() - cpu0) / 20_000)
            return {
                "totals": totals,
                "per_slice": per_slice,
                "lat": lat,
                "check_ns": statistics.median(per_call) * 1e9,
            }
        finally:
            await checked.close()

    out = asyncio.run(run())
    totals, lat = out["totals"], out["lat"]
    rate = {on: totals[on][0] / totals[on][1] for on in (False, True)}
    cpu_us = 1e6 * totals[False][2] / max(totals[False][0], 1)
    p99 = {on: percentile(lat[on], 99) or 0.0 for on in (False, True)}
    p50 = {on: percentile(lat[on], 50) or 0.0 for on in (False, True)}
    record.metrics = {
        "write_path_msg_s_checks_off": round(rate[False], 1),
        "write_path_msg_s_checks_on": round(rate[True], 1),
        "moderation_throughput_cost_pct": round(
            100.0 * (rate[False] - rate[True]) / rate[False], 2
        ),
        "slice_median_msg_s_checks_off": round(statistics.median(out["per_slice"][False]), 1),
        "slice_median_msg_s_checks_on": round(statistics.median(out["per_slice"][True]), 1),
        "p99_write_ms_checks_off": _r(p99[False]),
        "p99_write_ms_checks_on": _r(p99[True]),
        "moderation_p99_cost_pct": round(100.0 * (p99[True] - p99[False]) / p99[False], 2),
        "p50_write_ms_checks_off": _r(p50[False]),
        "p50_write_ms_checks_on": _r(p50[True]),
        "paced_messages_checks_off": len(lat[False]),
        "paced_messages_checks_on": len(lat[True]),
        "write_path_cpu_us_per_msg": round(cpu_us, 2),
        "moderation_check_ns": round(out["check_ns"], 1),
        "moderation_check_cpu_share_pct": round(100.0 * out["check_ns"] / 1000.0 / cpu_us, 3),
        "quiesce_wait_s": round(quiesce_s, 1),
    }
    record.series = {
        f"slice_msg_s_{'on' if on else 'off'}": [[i, v] for i, v in enumerate(vals)]
        for on, vals in out["per_slice"].items()
    }
    _bounds(
        record,
        gates={"moderation_check_cpu_share_pct": "<= 5"},
        targets={"moderation_throughput_cost_pct": "<= 5", "moderation_p99_cost_pct": "<= 5"},
    )
    record.notes.append(
        f"ChatService.post (rate limit → moderation check → CQL append → bus) in the test "
        f"process, {writers} writers, one room holding 1,000 bans, 1,000 timeouts and 10 "
        "moderators (the writers unrestricted, slow mode off), two services on one store: "
        "with the checks and without. Throughput: closed loop, "
        f"{MOD_SLICES} slices of {MOD_SLICE_S:g} s per side interleaved A B B A, messages / "
        f"seconds summed per side; latency: one paced run of {MOD_PACED_S:g} s at {RATE:g} "
        "msg/s per writer, each message through a random side, p99 per side. cost_pct = "
        "(on - off) / off (throughput: (off - on) / off). The CI gate is the check's own CPU "
        "(tight loop, median of 5) as a share of the write path's CPU per message (process "
        "CPU / messages of the slices without checks): robust on a busy 2-core box; the A/B "
        "figures are verdicts, noisy when other work shares the cores."
    )
    assert_targets(record)


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    env = {
        "CHAT_STORE": "cql",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "CHAT_RATE_PER_S": "1000",
        "CHAT_BURST": "1000",
    }
    with (
        # two servers reaching Cassandra at once on a busy box may take a while to start
        serve_process(tmp_path_factory.mktemp("mod-a"), SECRET, env, ready_s=120) as (_, a),
        serve_process(tmp_path_factory.mktemp("mod-b"), SECRET, env, ready_s=120) as (_, b),
    ):
        yield a, b


def TestChatModerationAcrossInstances(two_servers: tuple[str, str], record: TestResult) -> None:
    """Two `tchat serve` on one Redis and one CQL store: a ban or timeout set on one
    refuses the other's next post, an unban lets it post again, a deletion on A reaches
    B's clients — how long each takes, from the action's request and from the acting
    instance's answer (the action is set: stored, applied, published)."""
    import httpx

    a, b = two_servers
    room = f"modx-{uuid.uuid4().hex[:8]}"
    host = {"authorization": f"Bearer {issue_token(SECRET, room, 'publisher', 'host')}"}
    kinds = ("enforce", "lift", "delete")

    async def run() -> dict[str, list[tuple[float, float]]]:
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        ws_b = b.replace("http://", "ws://") + f"/rooms/{room}/ws"
        async with httpx.AsyncClient(timeout=10) as http, websockets.connect(ws_b) as on_b:
            await on_b.recv()  # hello

            async def post(server: str, who: str) -> httpx.Response:
                tok = issue_token(SECRET, room, "chat", who)
                return await http.post(
                    f"{server}/rooms/{room}/messages",
                    json={"text": "x"},
                    headers={"authorization": f"Bearer {tok}"},
                )

            async def act(server: str, kind: str, body: dict[str, Any]) -> tuple[float, float]:
                t0 = time.perf_counter()
                r = await http.post(
                    f"{server}/rooms/{room}/moderation/{kind}", json=body, headers=host
                )
                assert r.status_code == 200, r.text
                return t0, time.perf_counter()

            async def until(server: str, who: str, refused: bool) -> float:
                deadline = time.perf_counter() + 10
                while time.perf_counter() < deadline:
                    if ((await post(server, who)).status_code != 201) == refused:
                        return time.perf_counter()
                    await asyncio.sleep(0.002)
                raise AssertionError(f"{who} not {'refused' if refused else 'accepted'} in 10 s")

            def note(kind: str, t0: float, t1: float, effect: float) -> None:
                got[kind].append(((effect - t0) * 1000.0, max(0.0, effect - t1) * 1000.0))

            async def deleted(message: str) -> float:
                async with asyncio.timeout(15):
                    while True:
                        frame = json.loads(await on_b.recv())
                        if frame["type"] == "deleted" and frame["ids"] == [message]:
                            return time.perf_counter()

            for i in range(MOD_TRIALS):
                who = f"vic{i}"
                assert (await post(b, who)).status_code == 201
                kind, src, dst = ("ban", a, b) if i % 2 == 0 else ("timeout", b, a)
                body = {"target": who, "seconds": 60} if kind == "timeout" else {"target": who}
                t0, t1 = await act(src, kind, body)
                note("enforce", t0, t1, await until(dst, who, True))
                t0, t1 = await act(src, "unban", {"target": who})
                note("lift", t0, t1, await until(dst, who, False))
                message = (await post(a, f"poster{i}")).json()["id"]
                reader = asyncio.create_task(deleted(message))
                t0, t1 = await act(a, "delete", {"message_id": message})
                note("delete", t0, t1, await reader)
        return got

    got = asyncio.run(run())
    names = {
        "enforce": "enforce_other_instance",
        "lift": "lift_other_instance",
        "delete": "delete_reaches_other_instance",
    }
    record.metrics = {"trials": MOD_TRIALS}
    for kind, name in names.items():
        total = [t for t, _ in got[kind]]
        after = [x for _, x in got[kind]]
        record.metrics |= {
            f"{name}_p50_ms": _r(percentile(after, 50)),
            f"{name}_max_ms": _r(max(after)),
            f"{name}_from_request_p50_ms": _r(percentile(total, 50)),
            f"{name}_from_request_max_ms": _r(max(total)),
        }
    record.series = {
        f"{names[k]}_ms": [[i, x] for i, (_, x) in enumerate(v)] for k, v in got.items()
    }
    _bounds(
        record,
        gates={f"{name}_max_ms": "<= 1000" for name in names.values()},
        targets={f"{name}_from_request_max_ms": "<= 1000" for name in names.values()},
    )
    record.notes.append(
        "Two tchat serve (CHAT_STORE=cql, one Redis). *_ms = from the acting instance's "
        "answer (the action stored, applied and published) to the effect on the other "
        "instance; *_from_request_ms = from the action's request start (adds the action's own "
        "store writes). enforce = the first refused post (HTTP, polled every ~2 ms; bans set "
        "on A and checked on B, timeouts set on B and checked on A, alternating); lift = "
        "unban → the first accepted post; delete = the `deleted` frame on a WebSocket of B "
        "(timestamped on arrival). One shared 2-core box."
    )
    assert_targets(record)
