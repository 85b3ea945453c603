"""Catalog state machine, SQLite round trips, and retention decisions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tchat.recording.catalog import (
    TRANSITIONS,
    Catalog,
    Recording,
    TransitionError,
    UnknownRecording,
    ended,
    transition,
)
from tchat.recording.retention import due_for_expiry, lifecycle_days

DAY = 86400.0


def rec(rec_id: str = "r1", **changes: Any) -> Recording:
    return replace(Recording(rec_id, "room", "recording", started_at=1000.0), **changes)


def test_happy_path_sets_expiry_from_end() -> None:
    r = transition(rec(), "finalizing", ended_at=1060.0)
    r = ended(r, "available", 1060.0, 30 * DAY, segment_count=10)
    assert (r.state, r.ended_at, r.expires_at, r.segment_count) == (
        "available",
        1060.0,
        1060.0 + 30 * DAY,
        10,
    )
    assert transition(r, "expired").state == "expired"


@pytest.mark.parametrize(
    ("start", "to"),
    [
        ("recording", "available"),
        ("expired", "available"),
        ("available", "recording"),
        ("failed", "available"),
        ("finalizing", "recording"),
    ],
)
def test_forbidden_transitions(start: str, to: str) -> None:
    assert to not in TRANSITIONS[start]
    with pytest.raises(TransitionError, match=f"{start} → {to}"):
        transition(rec(state=start), to)  # type: ignore[arg-type]


def test_keys_live_under_the_recording_prefix() -> None:
    assert rec("abc").playlist_key == "recordings/abc/index.m3u8"


def test_catalog_round_trip(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite3")
    a = catalog.put(rec("a", room="x", started_at=1.0))
    b = catalog.put(ended(rec("b", room="y", started_at=2.0), "failed", 5.0, DAY, detail="why"))
    assert catalog.get("a") == a and catalog.get("b") == b
    assert [r.id for r in catalog.list()] == ["b", "a"]  # newest first
    assert [r.id for r in catalog.list(room="x")] == ["a"]
    assert [r.id for r in catalog.list(state="failed")] == ["b"]
    with pytest.raises(UnknownRecording):
        catalog.get("nope")
    with pytest.raises(ValueError, match="state must be one of"):
        catalog.list(state="bogus")
    catalog.close()
    again = Catalog(tmp_path / "c.sqlite3")
    assert again.get("b").detail == "why"
    again.close()


def test_due_for_expiry_only_ended_and_past() -> None:
    now = 100 * DAY
    recs = [
        rec("live"),
        rec("due", state="available", expires_at=now - 1),
        rec("exact", state="failed", expires_at=now),
        rec("later", state="available", expires_at=now + 1),
        rec("gone", state="expired", expires_at=now - 5),
        rec("finalizing", state="finalizing", expires_at=now - 5),
    ]
    assert [r.id for r in due_for_expiry(recs, now)] == ["due", "exact"]


def test_lifecycle_days_never_shorter_than_retention() -> None:
    assert lifecycle_days(30 * DAY) == 30
    assert lifecycle_days(30 * DAY + 1) == 31
    assert lifecycle_days(60) == 1
