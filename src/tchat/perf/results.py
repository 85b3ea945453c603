"""The results contract of the performance suite (see docs/performance.md).

Every performance test records its metrics, series and two kinds of bounds into its
suite's `reports/latest/<suite>.json` (plus a dated copy under `reports/<UTC date>/`):

- `targets` — the guide's absolute figures (p99 write <= 5 ms, first segment <= 5 s…).
  Always reported with their verdict (met / not met on this machine); they fail the
  per-suite runs (`make test-chat` …), not `make test`, whose verdict must not depend on
  which machine CI lands on.
- `gates` — what holds on any 2-core machine of this kind and so fails `make test` too:
  correctness (every message acknowledged and counted back, every segment playable…)
  and performance *relative* to a baseline measured in the same run (store p99 within
  k x the bare driver's, SFU CPU per packet within k x `sfu_bench`'s…).

`PERF_ENFORCE` picks what fails the run: `all` (default: gates and targets) or `gates`
(`make test`, via scripts/perf-suite.sh --ci-available). Bounds are strings such as
">= 95000" or "<= 5" evaluated here, so the JSON, the HTML report and the test's own
assertion agree.
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUITES = ("load", "latency", "chat", "recording", "web", "abuse", "network")
REPORTS_DIR = Path(os.environ.get("TCHAT_REPORTS_DIR", "reports"))
ENFORCE_MODES = ("all", "gates")  # PERF_ENFORCE: what fails a run (targets are always reported)


RESULT_FILE_ENV = "TCHAT_RESULT_FILE"  # where a helper process writes its result


def print_json_line(obj: Any) -> None:
    """A helper process's result: into the file its parent named in TCHAT_RESULT_FILE
    (`run_helper`), whole (a temporary name, then renamed), else one JSON line on stdout.
    Through a pipe a latency viewer's ~300 KB line arrived cut twice in fresh-clone CI
    runs, exit 0: 131,072 bytes on a non-blocking stdout, then 65,536 bytes after stdout
    was made blocking (below); a file has no such failure."""
    text = json.dumps(obj)
    path = os.environ.get(RESULT_FILE_ENV)
    if path:
        part = Path(path + ".part")
        part.write_text(text)
        os.replace(part, path)
        return
    fd = sys.stdout.fileno()
    os.set_blocking(fd, True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def run_helper(args: list[str], what: str) -> Any:
    """Run a helper process (`python -m …`, maybe behind `ip netns exec`, which keeps the
    environment) to its end; its result, read from the file it wrote (print_json_line).
    A helper that fails or writes no result raises RuntimeError with its stderr's end."""
    with tempfile.TemporaryDirectory(prefix="tchat-result-") as tmp:
        path = Path(tmp) / "result.json"
        proc = await asyncio.create_subprocess_exec(
            *args,
            env={**os.environ, RESULT_FILE_ENV: str(path)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        tail = err.decode(errors="replace")[-1500:]
        if proc.returncode != 0:
            raise RuntimeError(f"{what} failed ({proc.returncode}): {tail}")
        if not path.exists():
            raise RuntimeError(f"{what} exited 0 without a result: {tail}")
        return json.loads(path.read_text())


def parse_json_line(out: bytes, what: str) -> Any:
    """The last line of a helper process's stdout as JSON, or an error saying how long
    the line was (a cut line is a helper that could not write its result)."""
    lines = out.decode(errors="replace").strip().splitlines()
    if not lines:
        raise RuntimeError(f"{what} printed nothing")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise RuntimeError(
            f"{what}: its result line ({len(lines[-1])} chars) is not whole JSON: {exc}"
        ) from None


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}
_TARGET = re.compile(r"^\s*(>=|<=|==|>|<)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*$")


def parse_target(target: str) -> tuple[str, float]:
    match = _TARGET.match(target)
    if not match:
        raise ValueError(f"target {target!r} is not like '>= 95000' or '<= 5'")
    return match.group(1), float(match.group(2))


def meets(value: float | int | None, bound: str) -> bool:
    """Does one measured value satisfy one bound such as "<= 5" (unmeasured: no)?"""
    op, limit = parse_target(bound)
    return value is not None and _OPS[op](float(value), limit)


def unmet_targets(
    metrics: Mapping[str, float | int | None], targets: Mapping[str, str], kind: str = "target"
) -> list[str]:
    """The bounds (targets or gates) that the metrics miss, as readable lines (a missing
    metric misses)."""
    misses = []
    for name, target in targets.items():
        parse_target(target)  # a malformed bound is an error, not a miss
        value = metrics.get(name)
        if value is None:
            misses.append(f"{name}: not measured ({kind} {target})")
        elif not meets(value, target):
            misses.append(f"{name} = {value:g} misses {kind} {target}")
    return misses


def ratio(
    value: float | int | None, baseline: float | int | None, floor: float = 0.0
) -> float | None:
    """value / max(baseline, floor), rounded; None when either is unmeasured. For gates
    relative to a baseline of the same run; `floor` keeps a tiny baseline (below which
    scheduling noise dominates) from turning noise into a large ratio."""
    if value is None or baseline is None:
        return None
    base = max(float(baseline), floor)
    return round(float(value) / base, 3) if base > 0 else None


def enforce_mode() -> str:
    mode = os.environ.get("PERF_ENFORCE") or "all"
    if mode not in ENFORCE_MODES:
        raise ValueError(f"PERF_ENFORCE must be one of {', '.join(ENFORCE_MODES)}, not {mode!r}")
    return mode


@dataclass
class TestResult:
    __test__ = False  # not a pytest class, despite the name

    name: str
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    # the guide's absolute figures: reported with their verdict, enforced by PERF_ENFORCE=all
    targets: dict[str, str] = field(default_factory=dict)
    # correctness and same-run relative bounds: enforced in every mode (CI included)
    gates: dict[str, str] = field(default_factory=dict)
    # name → [[t_seconds, value], …]; the report plots each series
    series: dict[str, list[list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    passed: bool | None = None  # the verdict under `enforced`
    enforced: str | None = None
    targets_met: bool | None = None  # None: no targets
    gates_passed: bool | None = None  # None: no gates
    missed_targets: list[str] = field(default_factory=list)
    failed_gates: list[str] = field(default_factory=list)

    def evaluate(self, enforce: str = "all") -> list[str]:
        """Evaluate gates and targets; returns what fails the test under `enforce`
        (failed gates, then — with "all" — missed targets)."""
        if enforce not in ENFORCE_MODES:
            raise ValueError(f"enforce must be one of {ENFORCE_MODES}, not {enforce!r}")
        self.failed_gates = unmet_targets(self.metrics, self.gates, "gate")
        self.missed_targets = unmet_targets(self.metrics, self.targets, "target")
        self.gates_passed = not self.failed_gates if self.gates else None
        self.targets_met = not self.missed_targets if self.targets else None
        self.enforced = enforce
        misses = self.failed_gates + (self.missed_targets if enforce == "all" else [])
        self.passed = not misses
        return misses

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "passed": self.passed,
            "enforced": self.enforced,
            "gates_passed": self.gates_passed,
            "targets_met": self.targets_met,
            "metrics": self.metrics,
            "targets": self.targets,
            "gates": self.gates,
        }
        if self.failed_gates:
            out["failed_gates"] = self.failed_gates
        if self.missed_targets:
            out["missed_targets"] = self.missed_targets
        if self.series:
            out["series"] = self.series
        if self.notes:
            out["notes"] = self.notes
        return out


@dataclass
class SuiteResults:
    suite: str
    config: dict[str, Any] = field(default_factory=dict)
    tests: dict[str, TestResult] = field(default_factory=dict)
    started_at: str = field(
        default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; suites: {', '.join(SUITES)}")

    def test(self, name: str) -> TestResult:
        return self.tests.setdefault(name, TestResult(name))

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "started_at": self.started_at,
            "host": host_info(),
            "config": self.config,
            "tests": [t.to_json() for t in self.tests.values()],
        }

    def write(self, reports_dir: Path = REPORTS_DIR) -> Path:
        """Write latest/<suite>.json and the dated copy; returns the latest path."""
        body = json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"
        latest = reports_dir / "latest" / f"{self.suite}.json"
        dated = (
            reports_dir
            / time.strftime("%Y-%m-%d", time.gmtime())
            / (f"{self.suite}-{self.started_at.replace(':', '')}.json")
        )
        for path in (latest, dated):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(body)
            tmp.replace(path)
        return latest


def record_test(suite: str, test: TestResult, reports_dir: Path = REPORTS_DIR) -> Path:
    """Put one test's result into latest/<suite>.json beside the others already there
    (for suites whose tests run apart, e.g. the integration tests' network figures)."""
    path = reports_dir / "latest" / f"{suite}.json"
    results = SuiteResults(suite)
    try:
        old = json.loads(path.read_text())
        results.started_at = old["started_at"]
        tests = [t for t in old.get("tests", []) if t.get("name") != test.name]
    except (OSError, ValueError, KeyError):
        tests = []
    body = {**results.to_json(), "tests": [*tests, test.to_json()]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)
    return path


def host_info() -> dict[str, Any]:
    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    # round() first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point
    rank = min(len(ordered), max(1, math.ceil(round(pct * len(ordered) / 100.0, 9))))
    return ordered[rank - 1]
