"""The results contract of the performance suite (see docs/performance.md).

Every performance test records its metrics, targets and series into its suite's
`reports/latest/<suite>.json` (plus a dated copy under `reports/<UTC date>/`).
Targets are strings such as ">= 95000" or "<= 5" evaluated here, so the JSON,
the HTML report and the test's own assertion agree on pass/fail.
"""

from __future__ import annotations

import json
import math
import operator
import os
import platform
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUITES = ("load", "latency", "chat", "recording", "web", "abuse")
REPORTS_DIR = Path(os.environ.get("TCHAT_REPORTS_DIR", "reports"))

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


def unmet_targets(
    metrics: Mapping[str, float | int | None], targets: Mapping[str, str]
) -> list[str]:
    """The targets that the metrics miss, as readable lines (a missing metric misses)."""
    misses = []
    for name, target in targets.items():
        op, bound = parse_target(target)
        value = metrics.get(name)
        if value is None:
            misses.append(f"{name}: not measured (target {target})")
        elif not _OPS[op](float(value), bound):
            misses.append(f"{name} = {value:g} misses target {target}")
    return misses


@dataclass
class TestResult:
    __test__ = False  # not a pytest class, despite the name

    name: str
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    # name → [[t_seconds, value], …]; the report plots each series
    series: dict[str, list[list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    passed: bool | None = None

    def evaluate(self) -> list[str]:
        misses = unmet_targets(self.metrics, self.targets)
        self.passed = not misses
        return misses

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "passed": self.passed,
            "metrics": self.metrics,
            "targets": self.targets,
        }
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
