"""Keyframe request times follow FFmpeg's planned segment boundaries."""

from __future__ import annotations

import itertools

from tchat.recording.keyframes import KeyframeSchedule, segment_boundaries


def test_boundaries_short_first_segments_then_grid() -> None:
    assert list(itertools.islice(segment_boundaries(2.0, 6.0), 6)) == [2, 4, 8, 14, 20, 26]
    assert list(itertools.islice(segment_boundaries(1.0, 6.0), 5)) == [1, 2, 7, 13, 19]


def test_one_request_per_boundary_just_after_it() -> None:
    schedule = KeyframeSchedule(2.0, 6.0, margin_s=0.05)
    fired = [t / 100 for t in range(0, 1500, 5) if schedule.due(t / 100)]
    assert fired == [0.0, 2.05, 4.05, 8.05, 14.05]


def test_a_late_poll_fires_once_and_skips_missed_boundaries() -> None:
    schedule = KeyframeSchedule(2.0, 6.0, margin_s=0.05)
    assert schedule.due(0.0)
    assert schedule.due(9.0)  # boundaries 2, 4 and 8 have passed: one request
    assert not schedule.due(9.5)
    assert schedule.next_request_at == 14.05
