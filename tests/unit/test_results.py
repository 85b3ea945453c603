import json
from pathlib import Path

import pytest

from tchat.perf.report import render_report
from tchat.perf.results import SuiteResults, enforce_mode, percentile, ratio, unmet_targets


def test_targets() -> None:
    assert unmet_targets({"a": 5.0}, {"a": "<= 5"}) == []
    assert unmet_targets({"a": 5.1}, {"a": "<= 5"}) == ["a = 5.1 misses target <= 5"]
    assert unmet_targets({}, {"a": ">= 1"}) == ["a: not measured (target >= 1)"]
    assert unmet_targets({}, {"a": ">= 1"}, "gate") == ["a: not measured (gate >= 1)"]
    with pytest.raises(ValueError):
        unmet_targets({"a": 1}, {"a": "about 5"})


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([], 50) is None
    assert percentile([float(v) for v in range(1, 1001)], 99.9) == 999  # float rounding


def test_write_contract_and_render(tmp_path: Path) -> None:
    suite = SuiteResults("chat", config={"NUM_WRITERS": 2})
    test = suite.test("TestX")
    test.metrics = {"throughput_msg_s": 10.0}
    test.targets = {"throughput_msg_s": ">= 20"}
    test.series = {"throughput_msg_s": [[0, 1], [1, 10]]}
    assert test.evaluate() == ["throughput_msg_s = 10 misses target >= 20"]
    latest = suite.write(tmp_path)
    data = json.loads(latest.read_text())
    assert data["suite"] == "chat" and data["host"]["cpus"] >= 1
    assert data["tests"][0]["passed"] is False
    assert len(list(tmp_path.glob("20*/chat-*.json"))) == 1
    html = render_report(tmp_path / "latest").read_text()
    assert "TestX" in html and "not met" in html and "data:image/png;base64" in html


def test_gates_fail_everywhere_targets_only_where_enforced() -> None:
    suite = SuiteResults("chat")
    test = suite.test("TestWrite")
    test.metrics = {"p99_write_ms": 37.5, "p99_write_vs_driver": 1.4, "failed": 0}
    test.targets = {"p99_write_ms": "<= 5"}
    test.gates = {"p99_write_vs_driver": "<= 3", "failed": "== 0"}
    # CI (PERF_ENFORCE=gates): a missed target is reported, not a failure
    assert test.evaluate("gates") == []
    assert test.passed is True and test.gates_passed is True and test.targets_met is False
    assert test.missed_targets == ["p99_write_ms = 37.5 misses target <= 5"]
    out = test.to_json()
    assert out["enforced"] == "gates" and out["targets_met"] is False
    assert out["gates"] == test.gates and out["missed_targets"] == test.missed_targets
    # the per-suite run (PERF_ENFORCE=all): the same miss fails
    assert test.evaluate("all") == ["p99_write_ms = 37.5 misses target <= 5"]
    assert test.passed is False
    # a failed gate fails in both modes, and says it is a gate
    test.metrics["failed"] = 2
    assert test.evaluate("gates") == ["failed = 2 misses gate == 0"]
    assert test.evaluate("all")[0] == "failed = 2 misses gate == 0"
    assert test.to_json()["failed_gates"] == ["failed = 2 misses gate == 0"]
    with pytest.raises(ValueError):
        test.evaluate("some")


def test_report_shows_both_verdicts(tmp_path: Path) -> None:
    suite = SuiteResults("chat")
    test = suite.test("TestWrite")
    test.metrics = {"p99_write_ms": 37.5, "p99_write_vs_driver": 1.4, "lost": 1}
    test.targets = {"p99_write_ms": "<= 5"}
    test.gates = {"p99_write_vs_driver": "<= 3", "lost": "== 0"}
    test.evaluate("gates")
    suite.write(tmp_path)
    html = render_report(tmp_path / "latest").read_text()
    assert "targets met 0/1</span> on this machine" in html
    assert "1 of 2 gates FAIL" in html and "enforced: gates" in html
    assert "<code>&lt;= 3</code> <span class=pass>pass</span>" in html
    assert "<code>&lt;= 5</code> <span class=unmet>not met</span>" in html


def test_ratio_and_enforce_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(3.0, 0.2, floor=1.0) == 3.0  # a tiny baseline counts as the floor
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    monkeypatch.delenv("PERF_ENFORCE", raising=False)
    assert enforce_mode() == "all"
    monkeypatch.setenv("PERF_ENFORCE", "gates")
    assert enforce_mode() == "gates"
    monkeypatch.setenv("PERF_ENFORCE", "targets")
    with pytest.raises(ValueError):
        enforce_mode()


def test_unknown_suite() -> None:
    with pytest.raises(ValueError):
        SuiteResults("nope")
