"""T069 — adaptive quality and latency over real shaped links.

One `tchat serve` SFU, a synthetic publisher sending three stamped H.264 simulcast
layers (1.5 Mbps / 500 kbps / 150 kbps, `LATENCY_LAYERS`) + Opus, and four adaptive
viewers (`python -m tchat.perf.latency_viewer`), each in its own network namespace
behind a veth pair whose SFU → viewer direction is shaped with `tc tbf`:
high 3 Mbps, standard 1.5 Mbps, constrained 600 kbps, and a hysteresis viewer at
3 Mbps that drops to 1 Mbps and comes back (`tc qdisc change`). All run at once.

Latency is per packet, publisher send time (stamped in the payload) to viewer receive
time, one host and one clock. The viewer's playout buffer at the tier's target delay
(signalled by the SFU in the playout-delay extension) counts late frames and rebuffer
events. Needs root for the namespaces: skips, saying why, only where they cannot be
made (CI runs as root).

Profiles: ci — tier viewers 30 s, step down at 18 s; full — 60 s, step down at 22 s.
The right layer per link: the policy keeps a layer while its sent rate (RTP, with the
audio) fits the estimate (~85 % of the link) and climbs only with 20 % headroom:
3 Mbps → 2 (1.5 Mbps), 1.5 Mbps → 1 (500 kbps), 600 kbps → 0 (150 kbps; the 500 kbps
layer sends ~560 kbit/s). Viewers join 3 s after the publisher (layer rates measured).

Targets (reported with their verdict; enforced by `make test-latency`): p95 <= 150 ms,
0 rebuffers, convergence within 2/3 of the run, the top layer before the step,
downgrade within 2 s, upgrade <= 5 s after allowed. Gates (enforced by `make test` too,
tchat.perf.results): what the adaptation decides on a shaped link — the expected layer
and tier, <= 1 % loss, no oscillation and, where the hysteresis viewer had reached the
top layer before the step, down while the link is down and up no sooner than the 10 s
hold — and p99 under the guide's tier ceilings (1 / 3 / 5 s, 8x and more above what is
measured, docs/latency.md). Timings that a busy box stretches (the viewers stamp
arrivals in their own event loop: late frames, p95, the probes' pace) are targets.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest

from tchat.abr.policy import TIERS, oscillations
from tchat.admin import admin_url
from tchat.auth import issue_token
from tchat.perf.browser_viewer import (
    BrowserViewer,
    chromium_executable,
    jitter_buffer_ms,
    launch_chromium,
)
from tchat.perf.browser_viewer import summarize as browser_summary
from tchat.perf.netlab import NetLab, can_create_namespaces
from tchat.perf.results import REPORTS_DIR, TestResult, percentile, run_helper
from tchat.perf.server import free_port, serve_process
from tchat.perf.sfu_load import AUDIO_LAYER, MEDIA_CACHE, SyntheticPublisher
from tchat.perf.sfu_media import LATENCY_LAYERS, prepare
from tchat.perf.webrtc_peer import Identity
from tchat.sfu.forwarder import HIGH

try:
    from .conftest import PROFILE, assert_targets, sized
except ImportError:  # tests/performance is not a package in this checkout
    from conftest import PROFILE, assert_targets, sized  # type: ignore[no-redef]

pytestmark = pytest.mark.performance

DURATION = sized("LATENCY_DURATION_SECONDS", 30, 60)
STEP_DOWN_AT = sized("LATENCY_STEP_DOWN_AT", 18, 22)  # hysteresis viewer, after its start
STEP_BACK_AFTER = 3.0  # the link comes back this long after the step down
HYST_TAIL = 20.0  # the hysteresis viewer runs this long after the link came back
AIM_P95_MS = 150  # the issue's aim in every tier, far under the guide's ceilings
SECRET = "latency-test-secret-0123456789abcdef"
ROOM = "latency"
# name → (link rate, acceptable layers, expected tier index into TIERS)
TIER_LINKS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "high": (3_000_000, (2,), 0),
    "standard": (1_500_000, (1,), 1),
    # the 500 kbps layer sends ~560 kbit/s with the audio and headers: more than the
    # ~85 % of the link the estimate allows
    "constrained": (600_000, (0,), 2),
}
HYST_HIGH, HYST_LOW = 3_000_000, 1_000_000


async def _poll_stats(url: str, stop: asyncio.Event, out: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while not stop.is_set():
            try:
                resp = await client.get("/sfu/stats", params={"viewers": "true"})
                out.append({"mono": time.monotonic(), **resp.json()})
            except httpx.HTTPError:
                pass
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass


async def _viewer(lab: NetLab, index: int, port: int, duration: float) -> dict[str, Any]:
    link = lab.links[index]
    token = issue_token(SECRET, ROOM, "viewer", ttl_s=3600)
    args = [
        *lab.exec_args(link), sys.executable, "-m", "tchat.perf.latency_viewer",
        "--url", f"http://{link.host_ip}:{port}", "--room", ROOM, "--token", token,
        "--bind", link.ns_ip, "--duration", str(duration),
    ]  # fmt: skip
    result: dict[str, Any] = await run_helper(args, "latency viewer")
    return result


async def _scenario(lab: NetLab, url: str, admin: str) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    media = prepare(MEDIA_CACHE, layers=LATENCY_LAYERS, cbr=True)
    stats: list[dict[str, Any]] = []
    stop = asyncio.Event()
    marks: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        publisher = SyntheticPublisher(Identity.create(), media, ["l", "m", "h"], stamp=True)
        await publisher.start(client, ROOM, issue_token(SECRET, ROOM, "publisher", ttl_s=3600))
        await asyncio.sleep(3.0)  # the SFU measures each layer's rate over ≥ 2 s
        poller = asyncio.create_task(_poll_stats(admin, stop, stats))  # per-viewer: admin only

        async def hysteresis() -> dict[str, Any]:
            link = lab.links[3]
            marks["hyst_start"] = time.monotonic()
            run = asyncio.create_task(
                _viewer(lab, 3, port, STEP_DOWN_AT + STEP_BACK_AFTER + HYST_TAIL)
            )
            # the step is timed from the viewer's connection, not from its process start
            # (a Python start-up on a busy machine took 11 s: the link stepped down before
            # the viewer had climbed)
            deadline = time.monotonic() + 60
            while (
                time.monotonic() < deadline
                and not run.done()
                and not any(
                    str(v.get("addr", "")).split(":")[0] == link.ns_ip
                    for snap in stats[-2:]
                    for v in snap.get("viewers", [])
                )
            ):
                await asyncio.sleep(0.2)
            await asyncio.sleep(STEP_DOWN_AT)
            lab.change(link, HYST_LOW)
            marks["step_down"] = time.monotonic()
            await asyncio.sleep(STEP_BACK_AFTER)
            lab.change(link, HYST_HIGH)
            marks["step_up"] = time.monotonic()
            return await run

        try:
            results = await asyncio.gather(
                *(_viewer(lab, i, port, DURATION) for i in range(3)), hysteresis()
            )
        finally:
            stop.set()
            await poller
            await publisher.stop(client, issue_token(SECRET, ROOM, "publisher", ttl_s=60))
    return {"viewers": results, "stats": stats, "marks": marks}


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    reason = can_create_namespaces()
    if reason is not None:
        pytest.skip(f"T069 runs viewers behind real shaped links and {reason}")
    lab = NetLab()
    try:
        for rate, _, _ in TIER_LINKS.values():
            lab.add(rate)
        lab.add(HYST_HIGH)
        env = {
            "TCHAT_HOST": "0.0.0.0",  # the namespaces reach the SFU over their veth
            "SFU_UDP_HOST": "0.0.0.0",
            "SFU_PUBLIC_IP": lab.links[0].host_ip,  # a host address every namespace routes to
            # T071 measures recording; here its FFmpeg would only steal one of two cores
            "SFU_RECORD": "false",
            "TCHAT_ADMIN_PORT": str(admin_port := free_port()),
        }
        with serve_process(tmp_path_factory.mktemp("latency"), SECRET, env) as (_, url):
            out = asyncio.run(_scenario(lab, url, admin_url(admin_port)))
        out["links"] = [(link.host_ip, link.ns_ip) for link in lab.links]
        yield out
    finally:
        lab.close()


# -- analysis ---------------------------------------------------------------------------
def _sfu_view(run: dict[str, Any], index: int) -> tuple[list[dict[str, Any]], list[float]]:
    """This viewer's rows of /sfu/stats over time, and the poll times (monotonic)."""
    ip = run["links"][index][1]
    rows, times = [], []
    for snap in run["stats"]:
        for v in snap.get("viewers", []):
            if v.get("addr") and v["addr"].split(":")[0] == ip:
                rows.append({**v, "sfu_now": snap["now"]})
                times.append(snap["mono"])
    return rows, times


def _layer_changes(viewer: dict[str, Any]) -> list[tuple[float, int]]:
    """(t since viewer start, layer) whenever the layer the viewer receives changes."""
    changes: list[tuple[float, int]] = []
    for t, _, layer in viewer["samples"]:
        if layer == AUDIO_LAYER:
            continue
        if not changes or changes[-1][1] != layer:
            changes.append((t, layer))
    return changes


def _tier_metrics(run: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    index = list(TIER_LINKS).index(name)
    rate, _, _ = TIER_LINKS[name]
    viewer = run["viewers"][index]
    changes = _layer_changes(viewer)
    converged = changes[-1][0] if changes else None
    after = [ms for t, ms, _ in viewer["samples"] if converged is not None and t >= converged]
    rows, times = _sfu_view(run, index)
    final = rows[-1] if rows else {}
    estimate = final.get("estimate_bps")
    tier_index = next(
        (i for i, budget in enumerate(TIERS) if budget.tier.value == final.get("tier")), None
    )
    metrics = {
        "p50_latency_ms": percentile(after, 50),
        "p95_latency_ms": percentile(after, 95),
        "p99_latency_ms": percentile(after, 99),
        "rebuffer_events": _after(viewer["rebuffer_times_s"], converged),
        "late_frames": _after(viewer["late_times_s"], converged),
        "rebuffer_events_whole_run": viewer["rebuffer_events"],
        "loss_pct": viewer["loss_pct"],
        "converged_s": converged,
        "layer": changes[-1][1] if changes else None,
        "layer_ok": int(bool(changes) and changes[-1][1] in TIER_LINKS[name][1]),
        "tier_index": tier_index,
        "estimate_bps": estimate,
        "estimate_error_pct": 100.0 * (estimate - rate) / rate if estimate else None,
        "link_bps": rate,
        "probes": final.get("probes"),
        "failed_probes": final.get("failed_probes"),
        "packets_measured": len(after),
    }
    t0 = viewer["t0_mono"]
    series = {
        "layer": [[round(t, 2), lay] for t, lay in changes],
        "estimate_bps": _timeline(times, rows, "estimate_bps", t0),
        "target_layer": _timeline(times, rows, "target_layer", t0),
        "latency_p95_ms_per_s": _per_second_p95(viewer["samples"]),
    }
    return metrics, series


def _after(times: list[float], since: float | None) -> int | None:
    return None if since is None else sum(1 for t in times if t >= since)


def _timeline(
    times: list[float], rows: list[dict[str, Any]], key: str, t0: float
) -> list[list[float]]:
    return [[round(m - t0, 2), r[key]] for m, r in zip(times, rows, strict=True)]


def _per_second_p95(samples: list[list[float]]) -> list[list[float]]:
    buckets: dict[int, list[float]] = {}
    for t, ms, _ in samples:
        buckets.setdefault(int(t), []).append(ms)
    return [[float(s), percentile(v, 95) or 0.0] for s, v in sorted(buckets.items())]


def _tier_test(run: dict[str, Any], record: Any, name: str) -> None:
    metrics, series = _tier_metrics(run, name)
    _, layers, tier_index = TIER_LINKS[name]
    ceiling = TIERS[tier_index].ceiling_ms
    record.metrics.update(metrics)
    record.series.update(series)
    record.targets.update(
        {
            "p95_latency_ms": f"<= {min(ceiling, AIM_P95_MS)}",
            "p99_latency_ms": f"<= {ceiling}",
            "rebuffer_events": "== 0",
            "converged_s": f"<= {DURATION * 2 / 3:g}",
        }
    )
    record.gates.update(
        {
            "p99_latency_ms": f"<= {ceiling}",
            "loss_pct": "<= 1",
            "layer_ok": "== 1",
            "tier_index": f"== {tier_index}",
        }
    )
    rows, _ = _sfu_view(run, list(TIER_LINKS).index(name))
    log = rows[-1]["switch_log"] if rows else []
    t0 = run["viewers"][list(TIER_LINKS).index(name)]["t0_mono"]
    record.notes.append(
        "policy decisions (s since the viewer started, layer, why): "
        + json.dumps([[round(t - t0, 2), lay, why] for t, lay, why in log])
    )
    record.notes.append(
        f"{PROFILE}: link {TIER_LINKS[name][0] / 1e6:g} Mbps (tc tbf, SFU → viewer); latency "
        "after convergence (the last layer change the viewer saw); p95 aim 150 ms, the "
        f"guide's ceiling {ceiling} ms; tier_index 0 high, 1 standard, 2 constrained; "
        f"layer_ok: the final layer is one of {list(layers)}"
    )
    assert_targets(record)


def test_TestLatencyHighBandwidth(lab_run: dict[str, Any], record: Any) -> None:
    _tier_test(lab_run, record, "high")


def test_TestLatencyStandardBandwidth(lab_run: dict[str, Any], record: Any) -> None:
    _tier_test(lab_run, record, "standard")


def test_TestLatencyConstrainedBandwidth(lab_run: dict[str, Any], record: Any) -> None:
    _tier_test(lab_run, record, "constrained")


def test_TestQualitySwitchingHysteresis(lab_run: dict[str, Any], record: Any) -> None:
    """3 Mbps → 1 Mbps → (3 s later) 3 Mbps: down within 2 s, up 10-15 s after the down."""
    viewer = lab_run["viewers"][3]
    marks = lab_run["marks"]
    t0 = viewer["t0_mono"]
    down_at, up_at = marks["step_down"] - t0, marks["step_up"] - t0
    changes = _layer_changes(viewer)
    rows, times = _sfu_view(lab_run, 3)
    # the policy's decisions, on the SFU's clock (monotonic, as ours): the last poll's log
    log = rows[-1]["switch_log"] if rows else []
    decisions = [(t - t0, layer, why) for t, layer, why in log]
    before = [lay for t, lay in changes if t < down_at]
    start_layer = before[-1] if before else None
    seen_down = next(
        (t for t, lay in changes if t >= down_at and start_layer is not None and lay < start_layer),
        None,
    )
    down = next(
        ((t, lay) for t, lay, _ in decisions
         if t >= down_at and start_layer is not None and lay < start_layer),
        None,
    )  # fmt: skip
    dec_down = down[0] if down else None
    dec_up = next(
        (t for t, lay, _ in decisions if down is not None and t > down[0] and lay > down[1]),
        None,
    )
    seen_up = next(
        (t for t, lay in changes if seen_down is not None and t > seen_down
         and start_layer is not None and lay >= start_layer),
        None,
    )  # fmt: skip
    hold = 10.0
    metrics = {
        "layer_before_step": start_layer,
        "downgrade_s": seen_down - down_at if seen_down is not None else None,
        "downgrade_decision_s": dec_down - down_at if dec_down is not None else None,
        "upgrade_after_downgrade_s": dec_up - dec_down
        if dec_up is not None and dec_down is not None
        else None,
        "upgrade_seen_after_downgrade_seen_s": seen_up - seen_down
        if seen_up is not None and seen_down is not None
        else None,
        "upgrade_after_allowed_s": dec_up - dec_down - hold
        if dec_up is not None and dec_down is not None
        else None,
        "link_back_after_downgrade_s": up_at - dec_down if dec_down is not None else None,
        "oscillations": oscillations([(t, lay, why) for t, lay, why in decisions], hold),
        "switches": len(decisions),
        "probes": rows[-1]["probes"] if rows else None,
        "failed_probes": rows[-1]["failed_probes"] if rows else None,
        "rebuffer_events": viewer["rebuffer_events"],
        "loss_pct": viewer["loss_pct"],
    }
    record.metrics.update(metrics)
    record.series.update(
        {
            "layer": [[round(t, 2), lay] for t, lay in changes],
            "target_layer": _timeline(times, rows, "target_layer", t0),
            "estimate_bps": _timeline(times, rows, "estimate_bps", t0),
            "link_bps": [[0.0, HYST_HIGH], [round(down_at, 2), HYST_LOW], [round(up_at, 2), 3e6]],
            "latency_p95_ms_per_s": _per_second_p95(viewer["samples"]),
        }
    )  # fmt: skip
    record.notes.append(
        f"link 3 → 1 Mbps at {down_at:.1f} s, back to 3 Mbps at {up_at:.1f} s (viewer time); "
        "downgrade_s: step down → the viewer receives the lower layer; "
        "upgrade_after_downgrade_s: the policy's down → up decisions (hold 10 s, then "
        "≤ 5 s: headroom must have been sustained 5 s); decisions: "
        + json.dumps([[round(t, 2), lay, why] for t, lay, why in decisions])
    )
    record.targets.update(
        {
            "layer_before_step": "== 2",
            "downgrade_s": "<= 2",
            "upgrade_after_downgrade_s": ">= 10",
            "upgrade_after_allowed_s": "<= 5",
            "oscillations": "== 0",
        }
    )
    record.gates["oscillations"] = "== 0"
    if start_layer == 2:  # it had climbed to the top before the step (a timing: a target)
        record.gates["downgrade_s"] = f"<= {STEP_BACK_AFTER:g}"  # down while the link was
        record.gates["upgrade_after_downgrade_s"] = ">= 10"  # the hold
    else:
        record.notes.append(
            f"the viewer was on layer {start_layer} at the step, not the top: the step's "
            "gates do not apply (its targets report it)"
        )
    assert_targets(record)


def test_TestZeroRebuffer(lab_run: dict[str, Any], record: Any) -> None:
    """No viewer on a steady link ran out of frames to play once it had converged."""
    total = 0
    for index, name in enumerate(TIER_LINKS):
        viewer = lab_run["viewers"][index]
        metrics, _ = _tier_metrics(lab_run, name)
        record.metrics[f"{name}_rebuffer_events"] = metrics["rebuffer_events"]
        record.metrics[f"{name}_late_frames"] = metrics["late_frames"]
        record.metrics[f"{name}_rebuffer_events_whole_run"] = viewer["rebuffer_events"]
        record.metrics[f"{name}_frames"] = viewer["frames"]
        record.targets[f"{name}_rebuffer_events"] = "== 0"
        total += metrics["rebuffer_events"] or 0
    record.metrics["rebuffer_events"] = total
    record.targets["rebuffer_events"] = "== 0"
    record.metrics["hysteresis_rebuffer_events"] = lab_run["viewers"][3]["rebuffer_events"]
    record.notes.append(
        "the three steady-link viewers after convergence (whole runs reported beside); a frame "
        "is late "
        "when not complete by send time + the tier's target delay (playout-delay extension); "
        "a rebuffer event is a run of late frames. The hysteresis viewer's count (a link "
        "that drops under the stream) is reported, not asserted."
    )
    assert_targets(record)


def test_TestAllLatencyTargets(lab_run: dict[str, Any], record: Any) -> None:
    """Every tier under the guide's ceiling (< 1 s / < 3 s / < 5 s) at p99."""
    for name, (_, _, tier_index) in TIER_LINKS.items():
        metrics, _ = _tier_metrics(lab_run, name)
        for key in ("p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "converged_s"):
            record.metrics[f"{name}_{key}"] = metrics[key]
        record.metrics[f"{name}_estimate_error_pct"] = metrics["estimate_error_pct"]
        record.targets[f"{name}_p99_latency_ms"] = f"< {TIERS[tier_index].ceiling_ms}"
        record.gates[f"{name}_p99_latency_ms"] = f"< {TIERS[tier_index].ceiling_ms}"
    assert_targets(record)


# == T069 in the browser ===================================================================
# Chromium viewers (a plain RTCPeerConnection WHEP page, tchat.perf.browser_viewer), each
# tier in its own namespace behind the same kind of link, watching a decodable synthetic
# publisher (unstamped H.264, the same three layers) whose frames leave in two halves
# 5 ms apart as Chrome's pacer spreads them. What is measured is what the browser shows
# (getStats): frames, freezes, jitter-buffer delay, resolution; the SFU's layer and
# NACK tallies come from /sfu/stats. Besides the T069 tiers and the 3 → 1 → 3 step:
# - unshaped: the freeze of issue 12 (probe padding inside a frame) as a regression —
#   60 s with probing on, a default offer (RTX) and one without RTX (padding on the
#   media stream, only between frames);
# - lossy: 2 % of the datagrams to the viewer dropped at random, with and without RTX:
#   the NACK-answered rate.
# Gates (correctness, any machine): the video plays, probing really ran, no frame is lost
# for good on a perfect link (frames the SFU completed = frames Chrome assembled, counted
# after the publisher pauses and the links drain), the expected final layer. Targets
# (absolute timings, this machine): freezes, jitter-buffer p95, time to the layer.
BROWSER_ROOM = "latency-browser"
UNSHAPED_SECONDS = sized("LATENCY_UNSHAPED_SECONDS", 60, 60)
LOSS_PER_MILLE = 20
FRAME_GAP_S = 0.005
JB_P95_MS = 150
LAYER_WITHIN_S = 5.0
DRAIN_S = 3.0  # after the publisher pauses: the 1 s tbf queues empty, Chrome completes
# frames lost for good: the gate allows 1 s of video (a starved browser's own hiccup),
# against the hundreds issue 12's fault lost (808 of 1,198 frames in 41 s); target 0
LOST_FRAMES_GATE = 30
STEP_WAIT_S = 20.0  # the browser step waits this long at most for the top layer
MAX_TIER_S = 60.0  # a steady tier runs on (≤ this) until its viewer has its layer
SCREENS = REPORTS_DIR / "latest" / "screens"


@dataclass(frozen=True)
class Watch:
    """One viewer page: its label, what is stripped from Chrome's offer, its ?layer= cap."""

    label: str
    munge: tuple[str, ...] = ()
    cap: str = ""
    expected_layer: int | None = None  # the tier's unless capped lower


@dataclass(frozen=True)
class BrowserTier:
    name: str
    rate_bps: int  # tbf rate SFU → viewer; 0: unshaped
    expected_layer: int
    seconds: float
    batch: int  # tiers of one batch run at once (≤ 3 browsers on 2 cores)
    pages: tuple[Watch, ...] = (Watch("rtx"),)
    loss_per_mille: int = 0
    step: bool = False


BROWSER_TIERS = (
    BrowserTier("high", 3_000_000, 2, DURATION, 0),
    BrowserTier("standard", 1_500_000, 1, DURATION, 0),
    BrowserTier("constrained", 600_000, 0, DURATION, 0),
    BrowserTier("step", HYST_HIGH, 2, STEP_DOWN_AT + STEP_BACK_AFTER + HYST_TAIL, 1, step=True),
    # the freeze regression: Chrome's default offer (RTX), and one without RTX (probe
    # padding on the media numbering, between frames), each in a browser of its own
    BrowserTier("unshaped", 0, 2, UNSHAPED_SECONDS, 1),
    BrowserTier("unshaped-nortx", 0, 2, UNSHAPED_SECONDS, 1, (Watch("nortx", ("rtx",)),)),
    BrowserTier("lossy", 0, 1, DURATION, 2, (Watch("rtx", (), "mid"),), LOSS_PER_MILLE),
    BrowserTier(
        "lossy-nortx", 0, 1, DURATION, 2, (Watch("nortx", ("rtx",), "mid"),), LOSS_PER_MILLE
    ),
)


def _bounds(record: TestResult, gates: dict[str, str], targets: dict[str, str]) -> None:
    """Gates: correctness, fail `make test` too; targets: absolute figures of this machine,
    reported with their verdict and failing `make test-latency` (tchat.perf.results)."""
    record.targets.update(targets)
    record.gates.update(gates)


def _udp_errors(netns: str | None = None) -> dict[str, int]:
    """The kernel's UDP RcvbufErrors/SndbufErrors of a namespace (None: the host's)."""
    cmd = ["cat", "/proc/net/snmp"]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    lines = [
        ln.split()
        for ln in subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()
        if ln.startswith("Udp:")
    ]
    if len(lines) < 2:
        return {}
    row = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return {k: int(row.get(k, 0)) for k in ("RcvbufErrors", "SndbufErrors")}


def _cpu_seconds(netns: str) -> float:
    """CPU time (user + system) of every process in a namespace: its browser."""
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    total = 0.0
    for pid in pids.stdout.split():
        try:
            times = psutil.Process(int(pid)).cpu_times()
            total += times.user + times.system
        except (psutil.Error, ValueError):
            pass
    return total


class BrowserTierRun:
    """One tier's browser in its namespace: launched, then watching, sampled every 1 s."""

    def __init__(
        self, lab: NetLab, link: Any, tier: BrowserTier, origin: str, stats: list[dict[str, Any]]
    ) -> None:
        self.lab, self.link, self.tier, self.origin = lab, link, tier, origin
        self.stats = stats  # the /sfu/stats polls of the run, newest last
        self.out: dict[str, Any] = {}

    def _on_layer(self, sessions: set[str], layer: int) -> bool:
        """The SFU forwards `layer` to every viewer of this tier (latest poll)."""
        rows = [
            v
            for v in (self.stats[-1].get("viewers", []) if self.stats else [])
            if v.get("id") in sessions
        ]
        return len(rows) == len(sessions) and all(v.get("layer") == layer for v in rows)

    async def run(self, room: str, started: asyncio.Event, drained: asyncio.Event) -> None:
        tier, link = self.tier, self.link
        token = issue_token(SECRET, room, "viewer", ttl_s=3600)
        async with launch_chromium(link.netns) as browser:
            viewers = [BrowserViewer(browser, self.origin) for _ in tier.pages]
            for viewer in viewers:
                await viewer.open()
            self.out["launched"] = True
            await started.wait()  # every browser of the batch is up: the clock starts
            cpu0 = _cpu_seconds(link.netns)
            udp0 = _udp_errors(link.netns)
            t0 = time.monotonic()
            await asyncio.gather(
                *(
                    v.watch(room, token, w.munge, w.cap)
                    for v, w in zip(viewers, tier.pages, strict=True)
                )
            )
            self.out["t0"] = t0
            marks: dict[str, float] = {}
            sessions = {v.session for v in viewers}
            end = t0 + tier.seconds
            while True:
                now = time.monotonic()
                if now >= end:
                    if (
                        tier.step
                        or now - t0 >= MAX_TIER_S
                        or self._on_layer(sessions, tier.expected_layer)
                    ):
                        break
                    end = now + 1.0  # not on its layer yet: a busy machine climbs slower
                # the step waits for the top layer (a busy machine climbs in 15-25 s),
                # at most STEP_WAIT_S more; the run then lasts the step + HYST_TAIL
                if (
                    tier.step
                    and "step_down" not in marks
                    and now - t0 >= STEP_DOWN_AT
                    and (self._on_layer(sessions, HIGH) or now - t0 >= STEP_DOWN_AT + STEP_WAIT_S)
                ):
                    self.lab.change(link, HYST_LOW)
                    marks["step_down"] = time.monotonic()
                    end = marks["step_down"] + STEP_BACK_AFTER + HYST_TAIL
                if (
                    tier.step
                    and "step_up" not in marks
                    and now - marks.get("step_down", now) >= STEP_BACK_AFTER
                ):
                    self.lab.change(link, HYST_HIGH)
                    marks["step_up"] = time.monotonic()
                for viewer in viewers:
                    sample = await viewer.sample()
                    sample["mono"] = time.monotonic()
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            self.out["browser_cpu_s"] = round(_cpu_seconds(link.netns) - cpu0, 1)
            udp1 = _udp_errors(link.netns)
            self.out["viewer_udp_rcvbuf_errors"] = udp1.get("RcvbufErrors", 0) - udp0.get(
                "RcvbufErrors", 0
            )
            for viewer, watch in zip(viewers, tier.pages, strict=True):
                await viewer.screenshot(SCREENS / f"latency-browser-{tier.name}-{watch.label}.png")
            self.out["marks"] = marks
            self.out["measured"] = time.monotonic()
            await drained.wait()  # the publisher paused and every link drained
            finals = [await v.sample() for v in viewers]
            self.out["pages"] = [
                {
                    "label": w.label,
                    "session": v.session,
                    "samples": [s for s in v.samples if "mono" in s],
                    "final": final,
                    "answer_rtx": "rtx/90000" in v.answer,
                    "offer_rtx": "rtx/90000" in v.offer,
                    "errors": v.errors,
                }
                for v, w, final in zip(viewers, tier.pages, finals, strict=True)
            ]


async def _wait_all(tasks: list[asyncio.Task[None]], done: Any) -> None:
    """Until `done()` holds; a task that failed fails the run with its error."""
    while not done():
        for task in tasks:
            if task.done():
                task.result()
        await asyncio.sleep(0.2)


async def _browser_batch(
    client: httpx.AsyncClient,
    admin: str,
    lab: NetLab,
    port: int,
    batch: int,
    finals: dict[str, Any],
    stats: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """The tiers of one batch at once, watching a fresh publisher of their own room."""
    room = f"{BROWSER_ROOM}-{batch}"
    tiers = [(t, lab.links[i]) for i, t in enumerate(BROWSER_TIERS) if t.batch == batch]
    runs = [
        BrowserTierRun(lab, link, t, f"http://{link.host_ip}:{port}", stats) for t, link in tiers
    ]
    media = prepare(MEDIA_CACHE, layers=LATENCY_LAYERS, cbr=True)
    # paced frames and a padding packet per layer per frame, as a Chrome publisher sends
    publisher = SyntheticPublisher(
        Identity.create(), media, ["l", "m", "h"], frame_gap_s=FRAME_GAP_S, padding_per_frame=1
    )
    await publisher.start(client, room, issue_token(SECRET, room, "publisher", ttl_s=3600))
    started, drained = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(r.run(room, started, drained)) for r in runs]
    try:
        await _wait_all(tasks, lambda: all("launched" in r.out for r in runs))
        await asyncio.sleep(3.0)  # the SFU has measured each layer's rate over ≥ 2 s
        load0 = os.getloadavg()[0]
        udp0 = _udp_errors()
        started.set()
        await _wait_all(tasks, lambda: all("measured" in r.out for r in runs))
        await publisher.pause()
        await asyncio.sleep(DRAIN_S)
        finals[room] = (await client.get(f"{admin}/sfu/stats?viewers=true")).json()
        drained.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await publisher.stop(client, issue_token(SECRET, room, "publisher", ttl_s=60))
    udp1 = _udp_errors()
    for r in runs:
        r.out["room"] = room
        r.out["loadavg"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
        # context: the whole host's UDP buffer overflows over the batch (any process)
        r.out["host_udp_rcvbuf_errors"] = udp1.get("RcvbufErrors", 0) - udp0.get("RcvbufErrors", 0)
        r.out["publisher_packets_lost"] = finals[room].get("publisher_packets_lost")
        r.out["publisher_sent"] = publisher.sent
        r.out["sfu_drops"] = finals[room].get("drops")
    return {r.tier.name: r.out for r in runs}


async def _browser_scenario(lab: NetLab, url: str, admin: str) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    stats: list[dict[str, Any]] = []
    stop = asyncio.Event()
    results: dict[str, dict[str, Any]] = {}
    finals: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        poller = asyncio.create_task(_poll_stats(admin, stop, stats))  # per-viewer: admin only
        try:
            for batch in sorted({t.batch for t in BROWSER_TIERS}):
                results.update(await _browser_batch(client, admin, lab, port, batch, finals, stats))
        finally:
            stop.set()
            await poller
    return {"tiers": results, "stats": stats, "finals": finals}


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    reason = can_create_namespaces()
    if reason is not None:
        pytest.skip(f"T069 in the browser runs Chromium behind real shaped links and {reason}")
    chromium_executable()  # absent: fails with what to install, never skips
    lab = NetLab(prefix=f"tb{os.getpid() % 100000}", subnet=150 + os.getpid() % 50)
    try:
        for tier in BROWSER_TIERS:
            link = lab.add(tier.rate_bps)
            if tier.loss_per_mille:
                lab.lose(link, tier.loss_per_mille)
        env = {
            "TCHAT_HOST": "0.0.0.0",
            # bound to the advertised address, not 0.0.0.0: a socket on 0.0.0.0 answers
            # from the address of the route back (each link's own), and Chrome drops STUN
            # responses that do not come from where it sent the check (aioice accepts them)
            "SFU_UDP_HOST": lab.links[0].host_ip,
            "SFU_PUBLIC_IP": lab.links[0].host_ip,
            "SFU_RECORD": "false",
            # three browsers starting on a busy 2-core box may take their time over ICE
            "SFU_CONNECT_TIMEOUT": "60",
            "TCHAT_ADMIN_PORT": str(admin_port := free_port()),
        }
        with serve_process(tmp_path_factory.mktemp("latency-browser"), SECRET, env) as (_, url):
            out = asyncio.run(_browser_scenario(lab, url, admin_url(admin_port)))
        yield out
    finally:
        lab.close()


# -- analysis -------------------------------------------------------------------------------
def _sfu_rows(run: dict[str, Any], session: str) -> list[tuple[float, dict[str, Any]]]:
    return [
        (snap["mono"], v)
        for snap in run["stats"]
        for v in snap.get("viewers", [])
        if v.get("id") == session
    ]


def _final_row(run: dict[str, Any], session: str) -> dict[str, Any]:
    """The SFU's row of this viewer once its publisher paused and its link drained."""
    viewers = [v for final in run["finals"].values() for v in final.get("viewers", [])]
    return next((v for v in viewers if v.get("id") == session), {})


def _page_metrics(
    run: dict[str, Any], tier: BrowserTier, page: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    t0 = run["tiers"][tier.name]["t0"]
    rows = _sfu_rows(run, page["session"])
    samples = page["samples"]
    watch = next(w for w in tier.pages if w.label == page["label"])
    expected = tier.expected_layer if watch.expected_layer is None else watch.expected_layer
    layers = [(m - t0, r.get("layer")) for m, r in rows]
    expected_at = next((t for t, lay in layers if lay == expected), None)
    changes: list[tuple[float, int]] = []
    for t, lay in layers:
        if lay is not None and lay >= 0 and (not changes or changes[-1][1] != lay):
            changes.append((t, lay))
    settled = changes[-1][0] if changes else None
    whole = browser_summary(samples)
    after = browser_summary([s for s in samples if settled is None or s["mono"] - t0 >= settled])
    last = rows[-1][1] if rows else {}
    final_row = _final_row(run, page["session"])
    final = page["final"]
    sfu_frames = final_row.get("frames")
    # Chrome may count one more than the SFU completed: H.264 frames are found by
    # timestamp, so the half of the old layer's frame cut at a switch can pass as one
    gap = sfu_frames - final.get("frames_received", 0) if sfu_frames is not None else None
    lost_for_good = max(0, gap) if gap is not None else None
    metrics: dict[str, Any] = {
        "frames_decoded": whole["frames_decoded"],
        "freeze_count": whole.get("freeze_count"),
        "freezes_s": whole.get("freezes_s"),
        "freeze_count_after_settled": after.get("freeze_count"),
        "frames_dropped": whole.get("frames_dropped"),
        "jitter_buffer_p50_ms": whole.get("jitter_buffer_p50_ms"),
        "jitter_buffer_p95_ms": whole.get("jitter_buffer_p95_ms"),
        "jitter_buffer_mean_ms": whole.get("jitter_buffer_mean_ms"),
        "width": whole.get("width"),
        "height": whole.get("height"),
        "layer": changes[-1][1] if changes else None,
        "layer_ok": int(bool(changes) and changes[-1][1] == expected),
        "time_to_expected_layer_s": round(expected_at, 2) if expected_at is not None else None,
        "settled_s": round(settled, 2) if settled is not None else None,
        "packets_lost": final.get("lost"),
        "nacks_sent": final.get("nacks"),
        "plis_sent": final.get("plis"),
        "rtx_packets_received": final.get("rtx_packets"),
        "frames_sfu_completed": sfu_frames,
        "frames_chrome_assembled": final.get("frames_received"),
        "frames_lost_for_good": lost_for_good,
        "frames_gap": gap,
        "probes": last.get("probes"),
        "failed_probes": last.get("failed_probes"),
        "padding_bytes": final_row.get("padding_bytes", last.get("padding_bytes")),
        "rtx": int(bool(page["answer_rtx"])),
        "estimate_bps": last.get("estimate_bps"),
        "seconds": whole.get("seconds"),
        # context for the absolute figures: the browser's own CPU over the run (cores)
        # and the machine's load average at its start and end
        "browser_cpu_cores": round(run["tiers"][tier.name]["browser_cpu_s"] / tier.seconds, 2),
        "loadavg_start": run["tiers"][tier.name]["loadavg"][0],
        "loadavg_end": run["tiers"][tier.name]["loadavg"][1],
        "viewer_udp_rcvbuf_errors": run["tiers"][tier.name]["viewer_udp_rcvbuf_errors"],
        "host_udp_rcvbuf_errors": run["tiers"][tier.name]["host_udp_rcvbuf_errors"],
        "publisher_packets_lost": run["tiers"][tier.name]["publisher_packets_lost"],
    }
    nacks = final_row.get("nacks") or {}
    if nacks:
        asked = nacks["requested"] - nacks["repeated"]
        metrics.update({f"sfu_nack_{k}": v for k, v in nacks.items()})
        metrics["nack_answered_rate"] = round(nacks["answered"] / asked, 4) if asked else None
        metrics["retransmitted_bytes"] = final_row.get("retransmitted_bytes")
    series = {
        "width": [[round(s["mono"] - t0, 1), s.get("width", 0)] for s in samples],
        "layer": [[round(t, 2), lay] for t, lay in changes],
        "estimate_bps": [[round(m - t0, 2), r.get("estimate_bps")] for m, r in rows],
        "freeze_count": [[round(s["mono"] - t0, 1), s.get("freeze_count", 0)] for s in samples],
        "jitter_buffer_ms": [
            [round(s["mono"] - t0, 1), ms]
            for s, ms in zip(samples[1:], jitter_buffer_ms(samples), strict=False)
        ],
    }
    return metrics, series


def _tier_pages(run: dict[str, Any], name: str) -> tuple[BrowserTier, list[dict[str, Any]]]:
    tier = next(t for t in BROWSER_TIERS if t.name == name)
    return tier, run["tiers"][name]["pages"]


def _browser_tier_test(run: dict[str, Any], record: Any, name: str) -> None:
    tier, pages = _tier_pages(run, name)
    metrics, series = _page_metrics(run, tier, pages[0])
    record.metrics.update(metrics)
    record.series.update(series)
    _bounds(
        record,
        # frames lost on a shaped link follow packets a probe pushed past the 1 s queue
        # (timing: how fast a starved SFU and browser see the queue): a target there;
        # on the unshaped links a gate (TestBrowserUnshapedProbingNoFreeze)
        gates={
            "frames_decoded": f">= {tier.seconds:g}",  # ≥ 1 frame/s: the video plays
            "layer_ok": "== 1",
        },
        targets={
            "frames_lost_for_good": "== 0",
            "freeze_count": "== 0",
            "jitter_buffer_p95_ms": f"<= {JB_P95_MS}",
            "time_to_expected_layer_s": f"<= {LAYER_WITHIN_S:g}",
        },
    )
    record.notes.append(
        f"{PROFILE}: Chromium viewer, link {tier.rate_bps / 1e6:g} Mbps (tc tbf, SFU → "
        f"viewer), {tier.seconds:g} s, expected layer {tier.expected_layer}; freezes and "
        "jitter buffer from getStats over the whole run (freeze_count_after_settled: from "
        "the last layer change on); frames_lost_for_good = frames the SFU completed to "
        "the viewer − frames Chrome assembled (framesReceived), after the publisher "
        "paused and the link drained; publisher frames spread over 5 ms (paced)"
    )
    assert_targets(record)


def test_TestBrowserHighBandwidth(browser_run: dict[str, Any], record: Any) -> None:
    _browser_tier_test(browser_run, record, "high")


def test_TestBrowserStandardBandwidth(browser_run: dict[str, Any], record: Any) -> None:
    _browser_tier_test(browser_run, record, "standard")


def test_TestBrowserConstrainedBandwidth(browser_run: dict[str, Any], record: Any) -> None:
    _browser_tier_test(browser_run, record, "constrained")


def test_TestBrowserQualityStep(browser_run: dict[str, Any], record: Any) -> None:
    """3 → 1 → 3 Mbps under a Chromium viewer: at most one freeze, the video goes on."""
    tier, pages = _tier_pages(browser_run, "step")
    page = pages[0]
    metrics, series = _page_metrics(browser_run, tier, page)
    t0 = browser_run["tiers"]["step"]["t0"]
    marks = browser_run["tiers"]["step"]["marks"]
    down, up = marks["step_down"] - t0, marks["step_up"] - t0
    layers = series["layer"]
    before = [lay for t, lay in layers if t < down]
    seen_down = next((t for t, lay in layers if t >= down and before and lay < before[-1]), None)
    samples = page["samples"]
    after_up = [s for s in samples if s["mono"] - t0 >= up]
    metrics.update(
        {
            "layer_before_step": before[-1] if before else None,
            "downgrade_s": round(seen_down - down, 2) if seen_down is not None else None,
            "frames_after_step_up": (
                after_up[-1]["frames_decoded"] - after_up[0]["frames_decoded"]
                if len(after_up) > 1
                else 0
            ),
        }
    )
    record.metrics.update(metrics)
    record.series.update(series)
    record.series["link_bps"] = [
        [0.0, HYST_HIGH],
        [round(down, 2), HYST_LOW],
        [round(up, 2), HYST_HIGH],
    ]
    _bounds(
        record,
        # how soon the SFU sees a 3 s dip is timing (the Python viewer's hysteresis
        # test gates the policy); here: the browser had the top layer, and plays on
        gates={
            "layer_before_step": "== 2",
            "frames_after_step_up": f">= {HYST_TAIL / 2:g}",
        },
        targets={"freeze_count": "<= 1", "downgrade_s": "<= 2"},
    )
    record.notes.append(
        f"link 3 → 1 Mbps at {down:.1f} s, back at {up:.1f} s (viewer time); the whole-run "
        "jitter buffer and frames-lost figures are reported (a step overflows the 1 s queue)"
    )
    assert_targets(record)


def test_TestBrowserUnshapedProbingNoFreeze(browser_run: dict[str, Any], record: Any) -> None:
    """Issue 12's freeze: Chromium on an unshaped link with probing on, 60 s, 0 freezes —
    with RTX (padding on the RTX stream) and without (padding between frames only)."""
    gates: dict[str, str] = {}
    targets: dict[str, str] = {}
    runs = [_tier_pages(browser_run, name) for name in ("unshaped", "unshaped-nortx")]
    for tier, page in ((tier, pages[0]) for tier, pages in runs):
        metrics, series = _page_metrics(browser_run, tier, page)
        label = page["label"]
        for key, value in metrics.items():
            record.metrics[f"{label}_{key}"] = value
        for key in ("width", "layer", "freeze_count"):
            record.series[f"{label}_{key}"] = series[key]
        gates.update(
            {
                f"{label}_frames_decoded": f">= {tier.seconds:g}",
                f"{label}_frames_lost_for_good": f"<= {LOST_FRAMES_GATE}",
                f"{label}_padding_bytes": "> 0",  # probing really ran
            }
        )
        targets[f"{label}_freeze_count"] = "== 0"
        targets[f"{label}_frames_lost_for_good"] = "== 0"
    record.metrics["rtx_answered"] = int(runs[0][1][0]["answer_rtx"])
    record.metrics["nortx_answered"] = int(runs[1][1][0]["answer_rtx"])
    gates["rtx_answered"] = "== 1"  # Chrome's default offer has RTX and gets it
    gates["nortx_answered"] = "== 0"
    _bounds(record, gates, targets)
    record.notes.append(
        "regression of issue 12 (freezeCount 3 in 24 s at packetsLost 0): probe padding "
        "sent from the timer between two packets of one frame took sequence numbers inside "
        "it, so Chrome never completed that frame (its numbers were 'received', never "
        "NACKed) nor decoded anything until the next keyframe. The publisher spreads each "
        "frame over 5 ms so the SFU's 20 ms padding timer lands inside frames, as with "
        "Chrome publishers."
    )
    assert_targets(record)


def test_TestBrowserLossyNackRtx(browser_run: dict[str, Any], record: Any) -> None:
    """2 % random loss to the viewer: NACKs answered with RTX and without."""
    gates: dict[str, str] = {}
    runs = [_tier_pages(browser_run, name) for name in ("lossy", "lossy-nortx")]
    for tier, page in ((tier, pages[0]) for tier, pages in runs):
        metrics, series = _page_metrics(browser_run, tier, page)
        label = page["label"]
        for key, value in metrics.items():
            record.metrics[f"{label}_{key}"] = value
        record.series[f"{label}_freeze_count"] = series["freeze_count"]
        gates[f"{label}_frames_decoded"] = f">= {tier.seconds:g}"
        gates[f"{label}_nacks_sent"] = "> 0"  # the loss really made Chrome NACK
    gates["rtx_nack_answered_rate"] = ">= 0.9"
    gates["rtx_rtx_packets_received"] = "> 0"
    _bounds(record, gates, {"rtx_freeze_count": "== 0"})
    record.notes.append(
        f"{LOSS_PER_MILLE / 10:g} % of the datagrams to the viewer dropped at random "
        "(nftables numgen in its namespace), unshaped, ?layer=mid; nack_answered_rate = "
        "answered / (requested − repeated within a round trip), from the SFU's tallies "
        "(sfu_nack_*): without RTX the lost probe padding (media numbers) is NACKed and "
        "cannot be answered"
    )
    assert_targets(record)
