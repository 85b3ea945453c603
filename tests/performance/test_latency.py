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
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tchat.abr.policy import TIERS, oscillations
from tchat.auth import issue_token
from tchat.perf.netlab import NetLab, can_create_namespaces
from tchat.perf.results import percentile
from tchat.perf.server import serve_process
from tchat.perf.sfu_load import AUDIO_LAYER, MEDIA_CACHE, SyntheticPublisher
from tchat.perf.sfu_media import LATENCY_LAYERS, prepare
from tchat.perf.webrtc_peer import Identity

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
    proc = await asyncio.create_subprocess_exec(
        *lab.exec_args(link), sys.executable, "-m", "tchat.perf.latency_viewer",
        "--url", f"http://{link.host_ip}:{port}", "--room", ROOM, "--token", token,
        "--bind", link.ns_ip, "--duration", str(duration),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"latency viewer failed ({proc.returncode}): {err.decode()[-1500:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _scenario(lab: NetLab, url: str) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    media = prepare(MEDIA_CACHE, layers=LATENCY_LAYERS, cbr=True)
    stats: list[dict[str, Any]] = []
    stop = asyncio.Event()
    marks: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        publisher = SyntheticPublisher(Identity.create(), media, ["l", "m", "h"], stamp=True)
        await publisher.start(client, ROOM, issue_token(SECRET, ROOM, "publisher", ttl_s=3600))
        await asyncio.sleep(3.0)  # the SFU measures each layer's rate over ≥ 2 s
        poller = asyncio.create_task(_poll_stats(url, stop, stats))

        async def hysteresis() -> dict[str, Any]:
            link = lab.links[3]
            marks["hyst_start"] = time.monotonic()
            run = asyncio.create_task(
                _viewer(lab, 3, port, STEP_DOWN_AT + STEP_BACK_AFTER + HYST_TAIL)
            )
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
        }
        with serve_process(tmp_path_factory.mktemp("latency"), SECRET, env) as (_, url):
            out = asyncio.run(_scenario(lab, url))
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
