"""T068 — SFU load: real WebRTC viewers (ICE + DTLS + SRTP) of one live room.

One `tchat serve` with NUM_SFU_INSTANCES instance processes (one: the in-process SFU;
more: the origin → edge cluster), a synthetic publisher sending H.264 simulcast
(3 layers, FFmpeg/libx264, looped) + Opus over WHIP, and NUM_SFU_INSTANCES ×
VIEWERS_PER_INSTANCE viewers over WHEP in `python -m tchat.perf.sfu_load viewers`
processes (≤ LOAD_VIEWERS_PER_PROCESS each); the signalling spreads them over the
instances. Bulk viewers count SRTP packets from their headers; one in
LOAD_SAMPLE_EVERY decrypts and checks sequence continuity and payload integrity.

Profiles (the guide's env variables override either):
- ci:   NUM_SFU_INSTANCES=2, VIEWERS_PER_INSTANCE=100, TEST_DURATION_SECONDS=20
- full: NUM_SFU_INSTANCES=10, VIEWERS_PER_INSTANCE=5000, TEST_DURATION_SECONDS=300
        (on a 2-core box this reports what it reached and fails honestly).
CPU and µs/packet are measured over the steady window (all viewers joined); the join
phase's CPU peak is reported beside it as `cpu_pct_max_join_phase`. Per instance:
`instance<i>_*` (i = 0 is the origin). Relay cost: packets per edge from the run,
CPU per relayed packet from `tchat.perf.sfu_bench.relay_cost`, and the extra
latency of an edge, from two probe viewers (one on the origin, one on an edge)
receiving the same packets during the run.

Targets (the guide's: CPU < 70 % and RSS < 4 GB per instance, join < 5 s) are reported
with their verdict; gates (what `make test` enforces, tchat.perf.results) are
correctness — every viewer connects, sampled payloads intact and in order, no loss,
every instance serves, no restart — and the SFU's CPU per delivered packet *relative*
to `sfu_bench` (the forwarding hot path in a tight loop, on the fan-out the SFU runs:
native, or protect + sendto per viewer) run on the same box in the same run, before
and after the load (their mean): within BENCH_RATIO, whatever the machine's speed
(measured 2.5-3x: the whole process adds ICE, RTCP, timers and the event loop to the
hot path).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tchat.auth import issue_token
from tchat.perf import results as perf_results
from tchat.perf.results import percentile, ratio, run_helper
from tchat.perf.server import serve_process
from tchat.perf.sfu_bench import relay_cost
from tchat.perf.sfu_bench import run as bench_run
from tchat.perf.sfu_load import (
    MEDIA_CACHE,
    ArrivalProbe,
    SyntheticPublisher,
    extra_latency_ms,
    whep_join,
)
from tchat.perf.sfu_media import prepare
from tchat.perf.webrtc_peer import Identity
from tchat.sfu import fastpath

try:
    from .conftest import PROFILE, assert_targets, sized
except ImportError:  # tests/performance is not a package in this checkout
    from conftest import PROFILE, assert_targets, sized  # type: ignore[no-redef]

pytestmark = pytest.mark.performance

INSTANCES = int(sized("NUM_SFU_INSTANCES", 2, 10))
VIEWERS = int(sized("VIEWERS_PER_INSTANCE", 100, 5000))
DURATION = sized("TEST_DURATION_SECONDS", 20, 300)
MAX_CONNECTION_S = sized("MAX_CONNECTION_TIME", 5, 5)
PER_PROCESS = int(os.environ.get("LOAD_VIEWERS_PER_PROCESS", "1000"))
SAMPLE_EVERY = int(os.environ.get("LOAD_SAMPLE_EVERY", "10"))
LAYER = os.environ.get("LOAD_LAYER", "mid")
CONCURRENCY = int(os.environ.get("LOAD_JOIN_CONCURRENCY", "16"))
# the swarms' receive path for bulk viewers (tchat.perf.sfu_load --receive)
RECEIVE = os.environ.get("LOAD_RECEIVE", os.environ.get("SFU_FASTPATH", "auto"))
# gate: SFU process CPU per delivered packet <= this x sfu_bench's Python path (the
# yardstick of the machine's speed), by the fan-out the SFU runs (measured: Python 3.2-4.2
# and native 1.5-2.0 in the 2 x 100 CI profile: a margin of 1.2-1.5)
BENCH_RATIO = {"python": 5.0, "native": 3.0}
# issue 18's targets for the native fan-out, µs CPU per delivered packet: the SFU process
# in the CI profile and `sfu_bench --viewers 200` (fanout_bench_us_per_packet)
NATIVE_TARGET_US = 6.0
NATIVE_BENCH_TARGET_US = 1.5
NATIVE_BENCH_VIEWERS = 200
BENCH_PACKETS = 2000
SECRET = "load-test-secret-0123456789abcdef"
SAMPLE_S = 0.5
ROOM = "load"
SIGNALLING = "signalling"

Row = tuple[float, float, int, int, int, int]  # t, cpu_s, rss, delivered, relay_out, viewers


class Sampler:
    """CPU seconds, RSS and counters of every SFU instance process (and of the
    signalling process when the instances are separate), one /sfu/stats per step."""

    def __init__(self, serve_pid: int, url: str) -> None:
        self.serve = psutil.Process(serve_pid)
        self.url = url
        self.rows: dict[str, list[Row]] = {}
        self.restarts = 0
        self._procs: dict[int, psutil.Process] = {serve_pid: self.serve}

    def _sample(self, key: str, pid: int, t: float, s: dict[str, Any]) -> None:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        try:
            cpu = proc.cpu_times()
            rss = proc.memory_info().rss
        except psutil.Error:
            return
        viewers = int(s.get("viewers", s.get("viewers_connected", 0)))
        row = (t, cpu.user + cpu.system, rss, int(s.get("delivered_packets", 0)),
               int(s.get("relay_packets_out", 0)), viewers)  # fmt: skip
        self.rows.setdefault(key, []).append(row)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while not stop.is_set():
                try:
                    data = (await client.get("/sfu/stats")).json()
                except httpx.HTTPError:
                    data = None
                t = time.monotonic()
                if data is not None and "instances" in data:
                    self.restarts = int(data.get("restarts", 0))
                    for s in data["instances"]:
                        if "pid" in s:
                            self._sample(str(s["id"]), int(s["pid"]), t, s)
                    self._sample(SIGNALLING, self.serve.pid, t, {})
                elif data is not None:
                    self._sample("sfu", self.serve.pid, t, data)
                try:
                    await asyncio.wait_for(stop.wait(), SAMPLE_S)
                except TimeoutError:
                    pass


def window(rows: list[Row], t0: float, t1: float) -> list[Row]:
    return [r for r in rows if t0 <= r[0] <= t1]


def cpu_pcts(rows: list[Row], t0: float, t1: float) -> list[tuple[float, float]]:
    """(t, % of one core) per ~1 s step inside [t0, t1]."""
    w = window(rows, t0, t1)
    return [
        (b[0], 100.0 * (b[1] - a[1]) / (b[0] - a[0])) for a, b in zip(w[::2], w[2::2], strict=False)
    ]


async def _swarm(
    url: str, count: int, hold: float, span: float = 0.0, concurrency: int = CONCURRENCY
) -> dict[str, Any]:
    token = issue_token(SECRET, ROOM, "viewer", ttl_s=3600)
    args = [
        sys.executable, "-m", "tchat.perf.sfu_load", "viewers", "--url", url, "--room", ROOM,
        "--token", token, "--count", str(count), "--hold", str(hold),
        "--sample-every", str(SAMPLE_EVERY), "--concurrency", str(concurrency),
        "--layer", LAYER, "--arrival-span", str(span), "--receive", RECEIVE,
    ]  # fmt: skip
    result: dict[str, Any] = await run_helper(args, "viewer swarm")
    return result


def _instance_of(location: str) -> str:
    return location.rsplit("/", 1)[1].split(".", 1)[0]


async def _probe(client: httpx.AsyncClient, identity: Identity, watch: set[int]) -> tuple[
    ArrivalProbe, str
]:  # fmt: skip
    probe = ArrivalProbe(identity, watch)
    await probe.open()
    token = issue_token(SECRET, ROOM, "viewer", ttl_s=3600)
    return probe, _instance_of(await whep_join(client, ROOM, token, probe, LAYER))


async def _run(url: str, pid: int) -> dict[str, Any]:
    media = prepare(MEDIA_CACHE)
    pub_token = issue_token(SECRET, ROOM, "publisher", ttl_s=3600)
    sampler = Sampler(pid, url)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    identity = Identity.create()
    probes: list[tuple[ArrivalProbe, str]] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        publisher = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await publisher.start(client, ROOM, pub_token)
        origin = _instance_of(publisher.location) if INSTANCES > 1 else "sfu"
        if INSTANCES > 1:
            # placement ties go to the origin, so the first probe lands there, the next
            # on an edge: both get the same packets, one through the relay
            rid = {"low": "l", "mid": "m", "high": "h"}[LAYER]
            watch = {hash(p) for f in media.video[rid] for p in f.payloads}
            probes = [await _probe(client, identity, watch) for _ in range(2)]
        await asyncio.sleep(2.0)  # baseline RSS/CPU with the publisher only
        t_viewers = time.monotonic()
        rss_before = {k: rows[-1][2] for k, rows in sampler.rows.items()}
        total = INSTANCES * VIEWERS
        # even swarms: unequal ones finish joining at different times and the steady
        # window (all joined, none left) can vanish
        procs = -(-total // PER_PROCESS)
        sizes = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
        swarms = await asyncio.gather(*(_swarm(url, n, DURATION) for n in sizes))
        stop.set()
        await sampling
        await publisher.stop(client, pub_token)
    latency: list[float] = []
    if len(probes) == 2 and probes[0][1] == origin and probes[1][1] != origin:
        latency = extra_latency_ms(probes[0][0], probes[1][0])
    for probe, _ in probes:
        probe.close()
    return {
        "swarms": swarms,
        "sampler": sampler,
        "origin": origin,
        "t_viewers": t_viewers,
        "rss_before": rss_before,
        "publisher_restarts": dict(publisher.restarts),
        "probes": [loc for _, loc in probes],
        "edge_extra_latency_ms": latency,
    }


def _merge_swarms(m: dict[str, Any], swarms: list[dict[str, Any]]) -> dict[str, int]:
    """The viewers' figures of every swarm into `m`; returns failures by cause."""
    connect_ms: list[float] = []
    lost_num = lost_den = 0.0
    checks = {
        "sampled_bad_payloads": 0,
        "sampled_decrypt_errors": 0,
        "sampled_seq_gaps": 0,
        "sampled_payloads_checked": 0,
        "sampled_video_not_starting_on_keyframe": 0,
    }
    bitrates, viewer_pps = [], []
    errors: dict[str, int] = {}
    for s in swarms:
        connect_ms += s["connect_ms"]
        for k in checks:
            checks[k] += s[k]
        if s["viewer_loss_pct"] is not None and s["viewer_packets_received"]:
            recv = s["viewer_packets_received"]
            lost_num += s["viewer_loss_pct"] / 100 * recv
            lost_den += recv
        if s["viewer_bitrate_bps_avg"]:
            bitrates.append(s["viewer_bitrate_bps_avg"])
            viewer_pps.append(s["viewer_packets_per_s_avg"])
        for k, v in s["errors"].items():
            errors[k] = errors.get(k, 0) + v
    # the generator's cost per packet its viewers received (all its threads), per process
    gen = [s["receive"]["generator_cpu_us_per_packet"] for s in swarms]
    m["generator_cpu_us_per_packet"] = max((g for g in gen if g is not None), default=None)
    m["generator_receive_path"] = swarms[0]["receive"]["path"] if swarms else None
    attempted = sum(s["viewers_attempted"] for s in swarms)
    connected = sum(s["viewers_connected"] for s in swarms)
    m["viewers_attempted"] = attempted
    m["viewers_connected"] = connected
    m["connected_pct"] = 100.0 * connected / attempted if attempted else 0.0
    m["connection_time_avg_ms"] = sum(connect_ms) / len(connect_ms) if connect_ms else None
    m["connection_time_p50_ms"] = percentile(connect_ms, 50)
    m["connection_time_p95_ms"] = percentile(connect_ms, 95)
    m["connection_time_p99_ms"] = percentile(connect_ms, 99)
    m["connection_time_max_ms"] = max(connect_ms, default=None)
    m["viewer_loss_pct"] = 100.0 * lost_num / lost_den if lost_den else None
    m["viewer_bitrate_bps_avg"] = sum(bitrates) / len(bitrates) if bitrates else None
    m["viewer_packets_per_s_avg"] = sum(viewer_pps) / len(viewer_pps) if viewer_pps else None
    m.update(checks)
    return errors


def _measure(record: perf_results.TestResult, run: dict[str, Any]) -> None:
    swarms, sampler = run["swarms"], run["sampler"]
    m = record.metrics
    errors = _merge_swarms(m, swarms)
    t_joined = max(s["marks"]["t_joined"] for s in swarms)
    t_end = min(s["marks"]["t_end"] for s in swarms)
    t0, t1 = t_joined + 1.0, t_end - 0.5  # steady: all joined (+1 s) until the first lets go
    # instance 0 is the origin, then the edges in id order
    keys = sorted(
        (k for k in sampler.rows if k != SIGNALLING), key=lambda k: (k != run["origin"], k)
    )
    cpu_max: float | None = None
    cpu_join_max = 0.0
    rss_max = 0
    us_per_packet, mem_per_viewer = [], []
    serving = 0
    relay_pps = 0.0
    for i, key in enumerate(keys):
        rows = sampler.rows[key]
        steady = window(rows, t0, t1)
        cpu_steady = cpu_pcts(rows, t0, t1)
        cpu_join = cpu_pcts(rows, run["t_viewers"], t0)
        if cpu_steady:
            m[f"instance{i}_cpu_pct_max"] = max(c for _, c in cpu_steady)
            cpu_max = max(m[f"instance{i}_cpu_pct_max"], cpu_max or 0.0)  # type: ignore[type-var]
        else:
            record.notes.append(f"instance {i}: no steady window (swarms never all joined)")
        cpu_join_max = max([cpu_join_max] + [c for _, c in cpu_join])
        m[f"instance{i}_rss_bytes_max"] = max(r[2] for r in rows)
        rss_max = max(rss_max, max(r[2] for r in rows))
        m[f"instance{i}_is_origin"] = int(key == run["origin"])
        viewers = max(r[5] for r in (steady or rows))  # no steady window: the peak
        m[f"instance{i}_viewers"] = viewers
        serving += viewers > 0
        if len(steady) >= 2:
            span = steady[-1][0] - steady[0][0]
            d_cpu = steady[-1][1] - steady[0][1]
            d_out = steady[-1][3] - steady[0][3]
            d_relay = steady[-1][4] - steady[0][4]
            m[f"instance{i}_packets_out_per_s"] = d_out / span
            m[f"instance{i}_relay_packets_out_per_s"] = d_relay / span
            relay_pps += d_relay / span
            if d_out + d_relay > 0:
                m[f"instance{i}_cpu_us_per_packet"] = 1e6 * d_cpu / (d_out + d_relay)
                us_per_packet.append(1e6 * d_cpu / (d_out + d_relay))
        if steady and viewers:
            before = run["rss_before"].get(key, rows[0][2])
            mem_per_viewer.append((max(r[2] for r in steady) - before) / viewers)
        first = rows[0][0]
        record.series[f"cpu_pct_instance{i}"] = [
            [round(t - first, 2), round(c, 1)] for t, c in cpu_pcts(rows, rows[0][0], rows[-1][0])
        ]
        record.series[f"rss_bytes_instance{i}"] = [[round(r[0] - first, 2), r[2]] for r in rows]
    if SIGNALLING in sampler.rows:
        sig = cpu_pcts(sampler.rows[SIGNALLING], run["t_viewers"], t1)
        m["signalling_cpu_pct_max"] = max((c for _, c in sig), default=None)
    edges = max(0, len(keys) - 1)
    m["instances_serving_viewers"] = serving
    m["instance_restarts"] = sampler.restarts
    m["relay_packets_per_s_per_edge"] = relay_pps / edges if edges else None
    lat = run["edge_extra_latency_ms"]
    m["edge_extra_latency_ms_p50"] = percentile(lat, 50)
    m["edge_extra_latency_ms_p95"] = percentile(lat, 95)
    m["edge_extra_latency_samples"] = len(lat)
    m["publisher_keyframe_restarts"] = sum(run["publisher_restarts"].values())
    m["join_rate_per_s"] = m["viewers_connected"] / max(1e-3, t_joined - run["t_viewers"])
    m["cpu_pct_max_per_instance"] = cpu_max
    m["cpu_pct_max_join_phase"] = cpu_join_max
    m["rss_bytes_max_per_instance"] = rss_max
    m["sfu_cpu_us_per_packet"] = max(us_per_packet) if us_per_packet else None
    m["memory_bytes_per_viewer"] = max(mem_per_viewer) if mem_per_viewer else None
    if errors:
        record.notes.append(f"viewer failures by cause: {errors}")


def TestLoad50KConcurrentViewers(record: perf_results.TestResult, tmp_path: Path) -> None:
    """T068: every viewer connects; CPU < 70% and RSS < 4 GB per instance; join < 5 s avg;
    with several instances, every instance serves viewers of the one room."""
    record.notes.append(
        f"profile={PROFILE} instances={INSTANCES} viewers/instance={VIEWERS} "
        f"(one room, {INSTANCES * VIEWERS} viewers) duration={DURATION:g}s layer={LAYER} "
        f"sample_every={SAMPLE_EVERY} cpus={os.cpu_count()}; cpu % is of one core, measured "
        "after all viewers joined; instance0 is the origin, the others edges"
    )
    record.targets.update(
        {
            "connected_pct": ">= 100",
            "cpu_pct_max_per_instance": "< 70",
            "rss_bytes_max_per_instance": "< 4294967296",
            "connection_time_avg_ms": f"< {MAX_CONNECTION_S * 1000:g}",
        }
    )
    record.gates.update(
        {
            "connected_pct": ">= 100",
            "sampled_bad_payloads": "== 0",
            "sampled_decrypt_errors": "== 0",
            "sampled_payloads_checked": "> 0",
            "sampled_seq_gaps": "== 0",
            "sampled_video_not_starting_on_keyframe": "== 0",
            "viewer_loss_pct": "<= 1",
            "instances_serving_viewers": f">= {INSTANCES}",
            "instance_restarts": "== 0",
        }
    )
    import uvloop

    prepare(MEDIA_CACHE)  # FFmpeg runs once, before anything is timed
    # the hot path alone on this box, now (quiet CPU) and after the run: its Python path is
    # the yardstick of the CPU gate; the fan-out the SFU runs (SFU_FASTPATH, default auto:
    # native if built) is benched too
    path = fastpath.choose(os.environ.get("SFU_FASTPATH", "auto"))
    fan = record.metrics["fastpath"] = "native" if path.native else "python"
    record.gates["sfu_cpu_us_per_packet_vs_bench"] = f"<= {BENCH_RATIO[fan]:g}"
    # scripts/load-steered.sh: the viewers' kernel receive work on other cores than the SFU's
    record.metrics["viewers_receive_work"] = (
        os.environ.get("LOAD_STEERED") or "charged to the sender (plain loopback)"
    )
    if path.native:
        record.targets["sfu_cpu_us_per_packet"] = f"<= {NATIVE_TARGET_US:g}"
        record.targets["fanout_bench_us_per_packet"] = f"<= {NATIVE_BENCH_TARGET_US:g}"
    benches = [_benches(path)]
    if INSTANCES > 1:
        # both ends of the relay in this process, before the SFU runs (quiet CPU)
        record.metrics.update(relay_cost(20000))
    env = {
        "NUM_SFU_INSTANCES": str(INSTANCES),
        "SFU_MAX_PEERS": str(INSTANCES * VIEWERS + 100),
        # the swarm joins with one token, from one address, many at a time
        "SFU_MAX_CONNECTING_PER_IDENTITY": "100000",
        "SFU_MAX_CONNECTING_PER_ADDRESS": "100000",
        "SFU_SR_INTERVAL": "2",
        # T071 measures recording; here its FFmpeg would only steal one of two cores
        "SFU_RECORD": "false",
    }
    with serve_process(tmp_path / "sfu", SECRET, env) as (proc, url):
        run = uvloop.run(_run(url, proc.pid))
    benches.append(_benches(path))
    _measure(record, run)
    for name in benches[0]:
        before, after = benches[0][name], benches[1][name]
        record.metrics[name] = round((before + after) / 2, 2)
        record.metrics[f"{name}_before"], record.metrics[f"{name}_after"] = before, after
    record.metrics["sfu_cpu_us_per_packet_vs_bench"] = ratio(
        record.metrics.get("sfu_cpu_us_per_packet"), record.metrics["bench_us_per_packet"]
    )
    record.notes.append(
        f"bench = python -m tchat.perf.sfu_bench --viewers {VIEWERS} --packets "
        f"{BENCH_PACKETS} --fastpath python in this process before and after the run (mean; "
        f"fanout_bench: the SFU's fan-out with {NATIVE_BENCH_VIEWERS} viewers); the CI gate is "
        "sfu_cpu_us_per_packet "
        f"(the busiest instance) <= {BENCH_RATIO[fan]:g} x bench, the {fan} fan-out running"
    )
    print("\nT068:", json.dumps(record.metrics, default=str))
    assert_targets(record)


def _benches(path: fastpath.FastPath) -> dict[str, float]:
    """µs per delivered packet of the hot path in a tight loop: the Python path (the
    yardstick) and, when the SFU runs it, the native fan-out."""
    out = {"bench_us_per_packet": bench_run(VIEWERS, BENCH_PACKETS, False)["us_per_packet"]}
    if path.native:
        fanout = bench_run(NATIVE_BENCH_VIEWERS, BENCH_PACKETS, False, path=path)
        out["fanout_bench_us_per_packet"] = fanout["us_per_packet"]
    return out


# the scenario is 1,000 joins within 2 s (500 a second); the CI profile keeps that rate
# with as many viewers as one SFU process carries here on a machine 1.7x slower (this
# box carried ~530 of this stream at SFU_MAX_LOAD, docs/sfu.md)
STORM_VIEWERS = int(sized("JOIN_STORM_VIEWERS", 250, 1000))
STORM_SPAN_S = sized("JOIN_STORM_SPAN_SECONDS", 0.5, 2)
STORM_PROCESSES = 2  # the viewers' own ICE/DTLS work, spread over both cores
STORM_HOLD_S = 3.0


async def _storm(url: str) -> dict[str, Any]:
    """A live room, then STORM_VIEWERS viewers arriving evenly within STORM_SPAN_S (each
    swarm arrives over the whole span, nothing bounds the client side)."""
    media = prepare(MEDIA_CACHE)
    pub_token = issue_token(SECRET, ROOM, "publisher", ttl_s=3600)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        publisher = SyntheticPublisher(Identity.create(), media, ["l", "m", "h"])
        await publisher.start(client, ROOM, pub_token)
        await asyncio.sleep(1.0)
        n = STORM_PROCESSES
        sizes = [STORM_VIEWERS // n + (1 if i < STORM_VIEWERS % n else 0) for i in range(n)]
        swarms = await asyncio.gather(
            *(_swarm(url, k, STORM_HOLD_S, STORM_SPAN_S, concurrency=k) for k in sizes)
        )
        stats = (await client.get("/sfu/stats")).json()
        await publisher.stop(client, pub_token)
    return {"swarms": swarms, "stats": stats}


def TestJoinStorm(record: perf_results.TestResult, tmp_path: Path) -> None:
    """Issue 17: JOIN_STORM_VIEWERS viewers of one live room arriving within
    JOIN_STORM_SPAN_SECONDS (a popular room starting, or its viewers coming back at once):
    every one is admitted and gets media, none refused; p99 join time reported."""
    record.notes.append(
        f"profile={PROFILE} viewers={STORM_VIEWERS} arriving evenly within {STORM_SPAN_S:g}s "
        f"from {STORM_PROCESSES} processes, no client-side bound on requests in flight; one "
        f"SFU worker (in-process), layer={LAYER}; join = WHEP request → first media packet"
    )
    record.targets.update(
        {"connected_pct": ">= 100", "connection_time_p99_ms": f"< {MAX_CONNECTION_S * 1000:g}"}
    )
    record.gates.update(
        {
            "connected_pct": ">= 100",
            "sampled_bad_payloads": "== 0",
            "sampled_decrypt_errors": "== 0",
            "sampled_payloads_checked": "> 0",
            "sampled_video_not_starting_on_keyframe": "== 0",
        }
    )
    import uvloop

    prepare(MEDIA_CACHE)
    env = {
        "SFU_MAX_PEERS": str(STORM_VIEWERS + 100),
        # one token and one address stand for many viewers here
        "SFU_MAX_CONNECTING_PER_IDENTITY": "100000",
        "SFU_MAX_CONNECTING_PER_ADDRESS": "100000",
        "SFU_RECORD": "false",
    }
    with serve_process(tmp_path / "sfu", SECRET, env) as (_proc, url):
        run = uvloop.run(_storm(url))
    m = record.metrics
    errors = _merge_swarms(m, run["swarms"])
    t_start = min(s["marks"]["t_start"] for s in run["swarms"])
    t_joined = max(s["marks"]["t_joined"] for s in run["swarms"])
    m["storm_viewers"] = STORM_VIEWERS
    m["storm_span_s"] = STORM_SPAN_S
    m["join_phase_s"] = round(t_joined - t_start, 2)
    m["join_rate_per_s"] = m["viewers_connected"] / max(1e-3, t_joined - t_start)
    m["sfu_admission"] = run["stats"].get("admission")
    if errors:
        record.notes.append(f"viewer failures by cause: {errors}")
    print("\nJoin storm:", json.dumps(m, default=str))
    assert_targets(record)
