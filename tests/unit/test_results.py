import json
from pathlib import Path

import pytest

from tchat.perf.report import render_report
from tchat.perf.results import SuiteResults, percentile, unmet_targets


def test_targets() -> None:
    assert unmet_targets({"a": 5.0}, {"a": "<= 5"}) == []
    assert unmet_targets({"a": 5.1}, {"a": "<= 5"}) == ["a = 5.1 misses target <= 5"]
    assert unmet_targets({}, {"a": ">= 1"}) == ["a: not measured (target >= 1)"]
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
    assert "TestX" in html and "class=fail" in html and "data:image/png;base64" in html


def test_unknown_suite() -> None:
    with pytest.raises(ValueError):
        SuiteResults("nope")
