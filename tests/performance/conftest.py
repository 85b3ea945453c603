"""Shared frame of the performance suite.

One module per suite (`test_<suite>.py`); test names keep the guide's
(`TestChatThroughput100K`, …) and are collected as functions. Each test fills
`record` (metrics, targets, series) and ends with `assert_targets(record)`, so the
JSON written to reports/latest/<suite>.json and the test verdict always agree.
PERF_PROFILE picks the size: `ci` (named, sized for this 2-core box, run by
`make test`) or `full` (the guide's sizes); the guide's env variables override.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tchat.perf.results import SuiteResults, TestResult

PROFILE = os.environ.get("PERF_PROFILE", "ci")
if PROFILE not in ("ci", "full"):
    raise pytest.UsageError(f"PERF_PROFILE must be ci or full, not {PROFILE!r}")


def sized(env: str, ci: float, full: float) -> float:
    """The value of a size knob: the env variable if set, else the profile's value."""
    raw = os.environ.get(env)
    if raw is not None:
        return float(raw.rstrip("s")) if raw.rstrip("s").replace(".", "", 1).isdigit() else ci
    return ci if PROFILE == "ci" else full


@pytest.fixture(scope="module")
def suite_results(request: pytest.FixtureRequest) -> Iterator[SuiteResults]:
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    results = SuiteResults(name, config={"PERF_PROFILE": PROFILE})
    yield results
    if results.tests:
        path = results.write()
        print(f"\nperf: wrote {path}")


@pytest.fixture
def record(suite_results: SuiteResults, request: pytest.FixtureRequest) -> TestResult:
    return suite_results.test(request.node.name)


def assert_targets(result: TestResult) -> None:
    misses = result.evaluate()
    assert not misses, f"{result.name} ({PROFILE} profile): " + "; ".join(misses)
