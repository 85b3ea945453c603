"""What `GET /recordings/{id}` says about playability, per state (no server needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tchat.recording.api import recording_json
from tchat.recording.catalog import Recording

BASE = "http://tchat.test"
REC = Recording("abc", "room", "recording", started_at=1.0)
URL = f"{BASE}/cdn/recordings/abc/index.m3u8"


@pytest.mark.parametrize(
    ("state", "segments", "url"),
    [
        ("recording", 0, URL),
        ("finalizing", 3, URL),
        ("available", 10, URL),
        ("failed", 2, URL),
        ("failed", 0, None),
        ("expired", 10, None),
    ],
)
def test_playlist_url_by_state(state: str, segments: int, url: str | None) -> None:
    body = recording_json(replace(REC, state=state, segment_count=segments), BASE)  # type: ignore[arg-type]
    assert body["playlist_url"] == url
    assert body["id"] == "abc" and body["state"] == state
