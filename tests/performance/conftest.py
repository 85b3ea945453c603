"""Shared frame of the performance suite.

One module per suite (`test_<suite>.py`); test names keep the guide's
(`TestChatThroughput100K`, …) and are collected as functions. Each test fills
`record`: metrics, `targets` (the guide's absolute figures: reported with their
verdict, enforced by the per-suite runs), `gates` (correctness and bounds relative to a
baseline of the same run: enforced everywhere, `make test` included) and series, and
ends with `assert_targets(record)`, so the JSON written to reports/latest/<suite>.json
and the test verdict always agree (tchat.perf.results, docs/performance.md).
PERF_PROFILE picks the size: `ci` (named, sized for this 2-core box, run by
`make test`) or `full` (the guide's sizes); the guide's env variables override.
PERF_ENFORCE picks what fails: `all` (default) or `gates` (`make test`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tchat.perf.results import SuiteResults, TestResult, enforce_mode

PROFILE = os.environ.get("PERF_PROFILE", "ci")
if PROFILE not in ("ci", "full"):
    raise pytest.UsageError(f"PERF_PROFILE must be ci or full, not {PROFILE!r}")
try:
    ENFORCE = enforce_mode()
except ValueError as exc:
    raise pytest.UsageError(str(exc)) from None

_UNMET: list[str] = []  # targets missed but not enforced, for the terminal summary


def sized(env: str, ci: float, full: float) -> float:
    """The value of a size knob: the env variable if set, else the profile's value."""
    raw = os.environ.get(env)
    if raw is not None:
        return float(raw.rstrip("s")) if raw.rstrip("s").replace(".", "", 1).isdigit() else ci
    return ci if PROFILE == "ci" else full


@pytest.fixture(scope="module")
def suite_results(request: pytest.FixtureRequest) -> Iterator[SuiteResults]:
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    results = SuiteResults(name, config={"PERF_PROFILE": PROFILE, "PERF_ENFORCE": ENFORCE})
    yield results
    if results.tests:
        path = results.write()
        print(f"\nperf: wrote {path}")


@pytest.fixture
def record(suite_results: SuiteResults, request: pytest.FixtureRequest) -> TestResult:
    return suite_results.test(request.node.name)


def assert_targets(result: TestResult) -> None:
    """The test's verdict: its gates always, its targets unless PERF_ENFORCE=gates (then a
    missed target is printed and listed at the end of the run, and the test passes)."""
    misses = result.evaluate(ENFORCE)
    if result.missed_targets and ENFORCE == "gates":
        line = f"{result.name}: " + "; ".join(result.missed_targets)
        _UNMET.append(line)
        print(f"\nperf: target not met on this machine (reported, not enforced): {line}")
    assert not misses, f"{result.name} ({PROFILE} profile, PERF_ENFORCE={ENFORCE}): " + "; ".join(
        misses
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _UNMET:
        terminalreporter.section("performance targets not met on this machine (not enforced)")
        for line in _UNMET:
            terminalreporter.write_line(line)
