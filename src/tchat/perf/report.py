"""Render every suite's results into one offline HTML page with plots."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from tchat.perf.results import SUITES

_GUIDE = {  # the guide's "Performance Benchmarks" rows, for context next to ours
    "load": "T068: 50K viewers, 10K conn/s, <5s",
    "latency": "T069: 54 / 124 / 259 ms (simulated)",
    "chat": "T070: 100K msg/s, P99 <5ms",
    "recording": "T071: 10 segments, <5s first",
    "web": "issue 8: pages in a real browser (figures, no guide target)",
    "abuse": "issue 14: floods; amplification, RSS growth, service kept (no guide target)",
}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1rem 0;width:100%}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.pass{color:#087f23;font-weight:600}.fail{color:#b00020;font-weight:600}
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


def render_report(latest: Path) -> Path:
    suites = []
    for suite in SUITES:
        path = latest / f"{suite}.json"
        if path.exists():
            suites.append(json.loads(path.read_text()))
    if not suites:
        raise FileNotFoundError(f"no suite results in {latest} (run `make test-all` first)")

    parts = [
        f"<!doctype html><meta charset=utf-8><title>tchat performance</title>"
        f"<style>{_CSS}</style><h1>tchat performance report</h1>"
    ]
    parts.append(
        "<h2>Summary</h2><table><tr><th>suite</th><th>test</th><th>metric</th>"
        "<th>measured</th><th>target</th><th>status</th><th>guide (Go, mostly mocked)"
        "</th></tr>"
    )
    for data in suites:
        for test in data["tests"]:
            status = {
                True: "<span class=pass>pass</span>",
                False: "<span class=fail>fail</span>",
                None: "not evaluated",
            }[test.get("passed")]
            metrics = test.get("metrics", {})
            targets = test.get("targets", {})
            names = list(targets) or list(metrics)  # figures-only suites (web): all
            for i, name in enumerate(names):
                parts.append(
                    f"<tr><td>{html.escape(data['suite'])}</td><td>{html.escape(test['name'])}</td>"
                    f"<td><code>{html.escape(name)}</code></td><td>{_fmt(metrics.get(name))}</td>"
                    f"<td>{html.escape(targets.get(name, ''))}</td><td>{status if i == 0 else ''}"
                    f"</td><td>{html.escape(_GUIDE[data['suite']]) if i == 0 else ''}</td></tr>"
                )
    parts.append("</table>")

    for data in suites:
        parts.append(f"<h2 id={data['suite']}>{html.escape(data['suite'])}</h2>")
        parts.append(
            f"<p>started {html.escape(data['started_at'])} · host "
            f"<code>{html.escape(json.dumps(data.get('host', {})))}</code><br>config "
            f"<code>{html.escape(json.dumps(data.get('config', {})))}</code></p>"
        )
        for test in data["tests"]:
            parts.append(
                f"<h3>{html.escape(test['name'])}</h3><table><tr><th>metric</th>"
                "<th>value</th><th>target</th></tr>"
            )
            for name, value in test.get("metrics", {}).items():
                parts.append(
                    f"<tr><td><code>{html.escape(name)}</code></td><td>{_fmt(value)}</td>"
                    f"<td>{html.escape(test.get('targets', {}).get(name, ''))}</td></tr>"
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
    screens = sorted((latest / "screens").glob("*.png"))
    if screens:
        parts.append("<h2>Screenshots</h2>")
        parts.append("<div class=plots>")
        parts.extend(
            f"<a href='screens/{p.name}'><img alt='{html.escape(p.stem)}' src='screens/{p.name}'"
            f" title='{html.escape(p.name)}' style='max-width:260px'></a>"
            for p in screens
        )
        parts.append("</div>")
    out = latest / "index.html"
    out.write_text("\n".join(parts))
    return out
