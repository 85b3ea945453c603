"""Chromium publishing from behind a 400 kbit/s uplink is recorded (issue 12 item 2,
correctness; the timings per uplink are in the recording performance suite).

The top simulcast layers do not fit through 400 kbit/s (Chrome turns them on and
off); the recording must start within seconds on what flows, change layer only at
segment boundaries (a discontinuity there, one picture size per segment, every
#EXTINF within one frame of ffprobe's reading) and play to its end in hls.js.
Needs root for the network namespace: without it the test fails and says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .shaped_uplink import netns_problem, publish_behind_uplink


async def test_chromium_publisher_behind_a_400kbit_uplink_is_recorded(tmp_path: Path) -> None:
    problem = netns_problem()
    if problem is not None:
        pytest.fail(f"the shaped-uplink test {problem}")
    run = await publish_behind_uplink(tmp_path, 400_000, seconds=20)
    played = run.played
    assert played["ended"], played
    assert played["currentTime"] >= run.recording["duration_s"] - 0.5, (played, run.recording)
    assert not [e for e in played["hlsErrors"] if e.startswith("fatal")], played
    assert played["frames"] > 0
    # the recording starts within seconds even though the top layer cannot flow (a
    # generous bound: the 5 s target is the performance suite's)
    assert run.first_segment_s < 30, run
    assert run.layers and run.layers[0][1] == 0.0, run.layers  # logged from the start
    assert 1280 not in run.widths, run.widths  # f (1280×720) does not fit 400 kbit/s
    assert run.recording["duration_s"] >= 12, run.recording
