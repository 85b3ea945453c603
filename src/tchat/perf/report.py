"""Render every suite's results into one offline HTML page with plots.

Each bound is shown with its own verdict: gates (correctness and same-run relative
bounds, enforced by `make test`) pass or FAIL; the guide's targets are met or "not met
on this machine" (enforced by the per-suite runs) — see tchat.perf.results."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from tchat.perf.results import SUITES, meets

_GUIDE = {  # the guide's "Performance Benchmarks" rows, for context next to ours
    "load": "T068: 50K viewers, 10K conn/s, <5s",
    "latency": "T069: 54 / 124 / 259 ms (simulated)",
    "chat": "T070: 100K msg/s, P99 <5ms",
    "recording": "T071: 10 segments, <5s first",
    "web": "issue 8: pages in a real browser (figures, no guide target)",
    "abuse": "issue 14: floods; amplification, RSS growth, service kept (no guide target)",
    "network": "issue 17: publisher resume, ICE restart, ICE-TCP (figures, no guide target)",
}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1rem 0;width:100%}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.pass{color:#087f23;font-weight:600}.fail{color:#b00020;font-weight:600}
.unmet{color:#a15c00;font-weight:600}
.plots img{max-width:540px;margin:4px;border:1px solid #eee}code{font-size:12px}
"""


def _plot(name: str, points: list[list[float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=90)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    ax.plot(xs, ys, marker="." if len(points) < 60 else None, linewidth=1.2)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("s", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return html.escape(str(value))


def _bound(metrics: dict[str, Any], name: str, bounds: dict[str, str], gate: bool) -> str:
    """One bound and its verdict, as a table cell's HTML ('' where there is none)."""
    if name not in bounds:
        return ""
    ok = meets(metrics.get(name), bounds[name])
    if gate:
        verdict = "<span class=pass>pass</span>" if ok else "<span class=fail>FAIL</span>"
    else:
        verdict = "<span class=pass>met</span>" if ok else "<span class=unmet>not met</span>"
    return f"<code>{html.escape(bounds[name])}</code> {verdict}"


def _verdict(test: dict[str, Any]) -> str:
    """The test's verdicts in words: its gates, its targets and what was enforced."""
    gates, targets = test.get("gates", {}), test.get("targets", {})
    metrics = test.get("metrics", {})
    parts = []
    if gates:
        failed = sum(not meets(metrics.get(n), b) for n, b in gates.items())
        parts.append(
            f"<span class=pass>gates pass</span> ({len(gates)})"
            if not failed
            else f"<span class=fail>{failed} of {len(gates)} gates FAIL</span>"
        )
    if targets:
        met = sum(meets(metrics.get(n), b) for n, b in targets.items())
        cls = "pass" if met == len(targets) else "unmet"
        parts.append(f"<span class={cls}>targets met {met}/{len(targets)}</span> on this machine")
    if not parts:
        parts.append("figures only")
    enforced = test.get("enforced")
    if enforced:
        parts.append(f"enforced: {html.escape(enforced)}")
    return " · ".join(parts)


def _load_suites(latest: Path) -> list[dict[str, Any]]:
    suites = []
    for suite in SUITES:
        path = latest / f"{suite}.json"
        if path.exists():
            suites.append(json.loads(path.read_text()))
    if not suites:
        raise FileNotFoundError(f"no suite results in {latest} (run `make test-all` first)")
    return suites


def _summary_rows(data: dict[str, Any], test: dict[str, Any]) -> list[str]:
    """One test's rows of the summary table; suite, test and verdict only on its first."""
    metrics = test.get("metrics", {})
    targets, gates = test.get("targets", {}), test.get("gates", {})
    # the bounded metrics, gates first; figures-only suites (web): all
    names = list(dict.fromkeys([*gates, *targets])) or list(metrics)
    rows = []
    for i, name in enumerate(names):
        first = i == 0
        rows.append(
            f"<tr><td>{html.escape(data['suite']) if first else ''}</td>"
            f"<td>{html.escape(test['name']) if first else ''}</td>"
            f"<td>{_verdict(test) if first else ''}</td>"
            f"<td><code>{html.escape(name)}</code></td><td>{_fmt(metrics.get(name))}</td>"
            f"<td>{_bound(metrics, name, gates, True)}</td>"
            f"<td>{_bound(metrics, name, targets, False)}</td>"
            f"<td>{html.escape(_GUIDE[data['suite']]) if first else ''}</td></tr>"
        )
    return rows


def _summary(suites: list[dict[str, Any]]) -> list[str]:
    parts = [
        "<h2>Summary</h2><table><tr><th>suite</th><th>test</th><th>verdict</th><th>metric</th>"
        "<th>measured</th><th>gate (CI)</th><th>target (guide)</th>"
        "<th>guide (Go, mostly mocked)</th></tr>"
    ]
    for data in suites:
        for test in data["tests"]:
            parts.extend(_summary_rows(data, test))
    parts.append("</table>")
    return parts


def _test_section(test: dict[str, Any]) -> list[str]:
    """One test's detail: every metric with its bounds, its notes and its plots."""
    metrics = test.get("metrics", {})
    targets, gates = test.get("targets", {}), test.get("gates", {})
    parts = [
        f"<h3>{html.escape(test['name'])}</h3><p>{_verdict(test)}</p><table><tr>"
        "<th>metric</th><th>value</th><th>gate (CI)</th><th>target (guide)</th></tr>"
    ]
    for name, value in metrics.items():
        parts.append(
            f"<tr><td><code>{html.escape(name)}</code></td><td>{_fmt(value)}</td>"
            f"<td>{_bound(metrics, name, gates, True)}</td>"
            f"<td>{_bound(metrics, name, targets, False)}</td></tr>"
        )
    parts.append("</table>")
    for note in test.get("notes", []):
        parts.append(f"<p>{html.escape(note)}</p>")
    series = test.get("series", {})
    if series:
        parts.append("<div class=plots>")
        for name, points in series.items():
            if points:
                parts.append(
                    f"<img alt='{html.escape(name)}' "
                    f"src='data:image/png;base64,{_plot(name, points)}'>"
                )
        parts.append("</div>")
    return parts


def _suite_section(data: dict[str, Any]) -> list[str]:
    parts = [
        f"<h2 id={data['suite']}>{html.escape(data['suite'])}</h2>",
        f"<p>started {html.escape(data['started_at'])} · host "
        f"<code>{html.escape(json.dumps(data.get('host', {})))}</code><br>config "
        f"<code>{html.escape(json.dumps(data.get('config', {})))}</code></p>",
    ]
    for test in data["tests"]:
        parts.extend(_test_section(test))
    return parts


def _screenshots(latest: Path) -> list[str]:
    screens = sorted((latest / "screens").glob("*.png"))
    if not screens:
        return []
    parts = ["<h2>Screenshots</h2>", "<div class=plots>"]
    parts.extend(
        f"<a href='screens/{p.name}'><img alt='{html.escape(p.stem)}' src='screens/{p.name}'"
        f" title='{html.escape(p.name)}' style='max-width:260px'></a>"
        for p in screens
    )
    parts.append("</div>")
    return parts


def render_report(latest: Path) -> Path:
    suites = _load_suites(latest)
    parts = [
        f"<!doctype html><meta charset=utf-8><title>tchat performance</title>"
        f"<style>{_CSS}</style><h1>tchat performance report</h1>"
    ]
    parts.append(
        "<p><b>gate</b>: correctness and performance relative to a baseline measured in "
        "the same run; it holds on any 2-core machine of this kind and fails "
        "<code>make test</code>. <b>target</b>: the guide's absolute figure, reported "
        "with its verdict on this machine; it fails the per-suite runs "
        "(<code>make test-chat</code> …), not <code>make test</code>. "
        "See docs/performance.md.</p>"
    )
    parts.extend(_summary(suites))
    for data in suites:
        parts.extend(_suite_section(data))
    parts.extend(_screenshots(latest))
    out = latest / "index.html"
    out.write_text("\n".join(parts))
    return out
