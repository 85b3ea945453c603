"""T068 — SFU load: real WebRTC viewers (ICE + DTLS + SRTP) on one `tchat serve` SFU.

Per instance: a `tchat serve` process, a synthetic publisher sending H.264 simulcast
(3 layers, FFmpeg/libx264, looped) + Opus over WHIP, and swarms of viewers over WHEP
in `python -m tchat.perf.sfu_load viewers` processes (≤ LOAD_VIEWERS_PER_PROCESS each).
Bulk viewers count SRTP packets from their headers; one in LOAD_SAMPLE_EVERY decrypts
and checks sequence continuity and payload integrity.

Profiles (the guide's env variables override either):
- ci:   NUM_SFU_INSTANCES=1, VIEWERS_PER_INSTANCE=200, TEST_DURATION_SECONDS=20
- full: NUM_SFU_INSTANCES=10, VIEWERS_PER_INSTANCE=5000, TEST_DURATION_SECONDS=300
        (on a 2-core box this reports what it reached and fails honestly).
CPU and µs/packet are measured over the steady window (all viewers joined); the join
phase's CPU peak is reported beside it as `cpu_pct_max_join_phase`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tchat.auth import issue_token
from tchat.perf import results as perf_results
from tchat.perf.results import percentile
from tchat.perf.server import serve_process
from tchat.perf.sfu_load import MEDIA_CACHE, SyntheticPublisher
from tchat.perf.sfu_media import prepare
from tchat.perf.webrtc_peer import Identity

try:
    from .conftest import PROFILE, assert_targets, sized
except ImportError:  # tests/performance is not a package in this checkout
    from conftest import PROFILE, assert_targets, sized  # type: ignore[no-redef]

pytestmark = pytest.mark.performance

INSTANCES = int(sized("NUM_SFU_INSTANCES", 1, 10))
VIEWERS = int(sized("VIEWERS_PER_INSTANCE", 200, 5000))
DURATION = sized("TEST_DURATION_SECONDS", 20, 300)
MAX_CONNECTION_S = sized("MAX_CONNECTION_TIME", 5, 5)
PER_PROCESS = int(os.environ.get("LOAD_VIEWERS_PER_PROCESS", "1000"))
SAMPLE_EVERY = int(os.environ.get("LOAD_SAMPLE_EVERY", "10"))
LAYER = os.environ.get("LOAD_LAYER", "mid")
CONCURRENCY = int(os.environ.get("LOAD_JOIN_CONCURRENCY", "16"))
SECRET = "load-test-secret-0123456789abcdef"
SAMPLE_S = 0.5


class Sampler:
    """CPU seconds, RSS and delivered packets of one SFU process over time."""

    def __init__(self, pid: int, url: str) -> None:
        self.proc = psutil.Process(pid)
        self.url = url
        self.rows: list[tuple[float, float, int, int]] = []  # t, cpu_s, rss, delivered

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while not stop.is_set():
                t = time.monotonic()
                cpu = self.proc.cpu_times()
                rss = self.proc.memory_info().rss
                try:
                    delivered = int((await client.get("/sfu/stats")).json()["delivered_packets"])
                except httpx.HTTPError:
                    delivered = self.rows[-1][3] if self.rows else 0
                self.rows.append((t, cpu.user + cpu.system, rss, delivered))
                try:
                    await asyncio.wait_for(stop.wait(), SAMPLE_S)
                except TimeoutError:
                    pass

    def window(self, t0: float, t1: float) -> list[tuple[float, float, int, int]]:
        return [r for r in self.rows if t0 <= r[0] <= t1]

    def cpu_pcts(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """(t, % of one core) per ~1 s step inside [t0, t1]."""
        rows = self.window(t0, t1)
        out = []
        for a, b in zip(rows[::2], rows[2::2], strict=False):
            out.append((b[0], 100.0 * (b[1] - a[1]) / (b[0] - a[0])))
        return out


async def _swarm(url: str, room: str, count: int, hold: float) -> dict[str, Any]:
    token = issue_token(SECRET, room, "viewer", ttl_s=3600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tchat.perf.sfu_load", "viewers", "--url", url, "--room", room,
        "--token", token, "--count", str(count), "--hold", str(hold),
        "--sample-every", str(SAMPLE_EVERY), "--concurrency", str(CONCURRENCY),
        "--layer", LAYER,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"viewer swarm failed ({proc.returncode}): {err.decode()[-1500:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _instance(url: str, pid: int, index: int) -> dict[str, Any]:
    room = f"load-{index}"
    media = prepare(MEDIA_CACHE)
    pub_token = issue_token(SECRET, room, "publisher", ttl_s=3600)
    sampler = Sampler(pid, url)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        publisher = SyntheticPublisher(Identity.create(), media, ["l", "m", "h"])
        await publisher.start(client, room, pub_token)
        await asyncio.sleep(2.0)  # baseline RSS/CPU with the publisher only
        t_viewers = time.monotonic()
        rss_before = sampler.rows[-1][2]
        sizes = [min(PER_PROCESS, VIEWERS - i) for i in range(0, VIEWERS, PER_PROCESS)]
        swarms = await asyncio.gather(*(_swarm(url, room, n, DURATION) for n in sizes))
        stop.set()
        await sampling
        await publisher.stop(client, pub_token)
    return {
        "swarms": swarms,
        "sampler": sampler,
        "t_viewers": t_viewers,
        "rss_before": rss_before,
        "publisher_restarts": dict(publisher.restarts),
    }


def _measure(record: perf_results.TestResult, instances: list[dict[str, Any]]) -> None:
    attempted = connected = 0
    connect_ms: list[float] = []
    join_rates = []
    cpu_max: float | None = None  # None: no steady window (never all joined at once)
    cpu_join_max = 0.0
    rss_max = 0
    us_per_packet = []
    mem_per_viewer = []
    lost_num = lost_den = 0.0
    checks = {
        "sampled_bad_payloads": 0,
        "sampled_decrypt_errors": 0,
        "sampled_seq_gaps": 0,
        "sampled_payloads_checked": 0,
        "sampled_video_not_starting_on_keyframe": 0,
    }
    bitrates = []
    viewer_pps = []
    errors: dict[str, int] = {}
    for i, inst in enumerate(instances):
        swarms, sampler = inst["swarms"], inst["sampler"]
        t_joined = max(s["marks"]["t_joined"] for s in swarms)
        t_end = min(s["marks"]["t_end"] for s in swarms)
        ok = sum(s["viewers_connected"] for s in swarms)
        attempted += sum(s["viewers_attempted"] for s in swarms)
        connected += ok
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
        join_rates.append(ok / max(1e-3, t_joined - inst["t_viewers"]))
        # steady window: all joined (+1 s settling) until the first swarm lets go
        steady = sampler.window(t_joined + 1.0, t_end - 0.5)
        cpu_steady = sampler.cpu_pcts(t_joined + 1.0, t_end - 0.5)
        cpu_join = sampler.cpu_pcts(inst["t_viewers"], t_joined + 1.0)
        if cpu_steady:
            cpu_max = max([c for _, c in cpu_steady] + ([] if cpu_max is None else [cpu_max]))
        else:
            record.notes.append(f"instance {i}: no steady window (swarms never all joined)")
        cpu_join_max = max([cpu_join_max] + [c for _, c in cpu_join])
        rss_max = max([rss_max] + [r[2] for r in sampler.rows])
        if len(steady) >= 2 and steady[-1][3] > steady[0][3]:
            d_cpu = steady[-1][1] - steady[0][1]
            d_pkt = steady[-1][3] - steady[0][3]
            us_per_packet.append(1e6 * d_cpu / d_pkt)
            record.metrics[f"delivered_pps_instance{i}"] = d_pkt / (steady[-1][0] - steady[0][0])
        if steady and ok:
            mem_per_viewer.append((max(r[2] for r in steady) - inst["rss_before"]) / ok)
        t0 = sampler.rows[0][0]
        record.series[f"cpu_pct_instance{i}"] = [
            [round(t - t0, 2), round(c, 1)]
            for t, c in sampler.cpu_pcts(sampler.rows[0][0], sampler.rows[-1][0])
        ]
        record.series[f"rss_bytes_instance{i}"] = [
            [round(r[0] - t0, 2), r[2]] for r in sampler.rows
        ]
        record.metrics[f"publisher_keyframe_restarts_instance{i}"] = sum(
            inst["publisher_restarts"].values()
        )
    m = record.metrics
    m["viewers_attempted"] = attempted
    m["viewers_connected"] = connected
    m["connected_pct"] = 100.0 * connected / attempted if attempted else 0.0
    m["connection_time_avg_ms"] = sum(connect_ms) / len(connect_ms) if connect_ms else None
    m["connection_time_p50_ms"] = percentile(connect_ms, 50)
    m["connection_time_p95_ms"] = percentile(connect_ms, 95)
    m["connection_time_p99_ms"] = percentile(connect_ms, 99)
    m["join_rate_per_s"] = sum(join_rates)
    m["cpu_pct_max_per_instance"] = cpu_max
    m["cpu_pct_max_join_phase"] = cpu_join_max
    m["rss_bytes_max_per_instance"] = rss_max
    m["sfu_cpu_us_per_packet"] = max(us_per_packet) if us_per_packet else None
    m["memory_bytes_per_viewer"] = max(mem_per_viewer) if mem_per_viewer else None
    m["viewer_loss_pct"] = 100.0 * lost_num / lost_den if lost_den else None
    m["viewer_bitrate_bps_avg"] = sum(bitrates) / len(bitrates) if bitrates else None
    m["viewer_packets_per_s_avg"] = sum(viewer_pps) / len(viewer_pps) if viewer_pps else None
    m.update(checks)
    if errors:
        record.notes.append(f"viewer failures by cause: {errors}")


def TestLoad50KConcurrentViewers(record: perf_results.TestResult, tmp_path: Path) -> None:
    """T068: every viewer connects; CPU < 70% and RSS < 4 GB per instance; join < 5 s avg."""
    record.notes.append(
        f"profile={PROFILE} instances={INSTANCES} viewers/instance={VIEWERS} "
        f"duration={DURATION:g}s layer={LAYER} sample_every={SAMPLE_EVERY} "
        f"cpus={os.cpu_count()}; cpu % is of one core, measured after all viewers joined"
    )
    record.targets.update(
        {
            "connected_pct": ">= 100",
            "cpu_pct_max_per_instance": "< 70",
            "rss_bytes_max_per_instance": "< 4294967296",
            "connection_time_avg_ms": f"< {MAX_CONNECTION_S * 1000:g}",
            "sampled_bad_payloads": "== 0",
            "sampled_decrypt_errors": "== 0",
            "sampled_payloads_checked": "> 0",
            "sampled_seq_gaps": "== 0",
            "sampled_video_not_starting_on_keyframe": "== 0",
            "viewer_loss_pct": "<= 1",
        }
    )
    import uvloop

    prepare(MEDIA_CACHE)  # FFmpeg runs once, before anything is timed
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                serve_process(
                    tmp_path / f"sfu{i}",
                    SECRET,
                    {"SFU_MAX_PEERS": str(VIEWERS + 100), "SFU_SR_INTERVAL": "2"},
                )
            )
            for i in range(INSTANCES)
        ]

        async def run_all() -> list[dict[str, Any]]:
            return list(
                await asyncio.gather(
                    *(_instance(url, proc.pid, i) for i, (proc, url) in enumerate(servers))
                )
            )

        instances = uvloop.run(run_all())
    _measure(record, instances)
    print("\nT068:", json.dumps({k: v for k, v in record.metrics.items()}, default=str))
    assert_targets(record)
