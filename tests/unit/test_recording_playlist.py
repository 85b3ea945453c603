"""Playlist parsing, validation, rendering and FFmpeg-output tracking (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tchat.recording.playlist import (
    Playlist,
    PlaylistError,
    Segment,
    SegmentTracker,
    parse,
    render,
    target_duration_for,
    validate,
)

FFMPEG_ONE_ENTRY = """#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:{td}
#EXT-X-MEDIA-SEQUENCE:{seq}
#EXT-X-INDEPENDENT-SEGMENTS
#EXTINF:{dur:.6f},
#EXT-X-PROGRAM-DATE-TIME:{pdt}
seg_{seq:05d}.ts
"""


def ffmpeg_playlist(seq: int, dur: float, pdt: str, end: bool = False) -> str:
    text = FFMPEG_ONE_ENTRY.format(td=round(dur), seq=seq, dur=dur, pdt=pdt)
    return text + ("#EXT-X-ENDLIST\n" if end else "")


def test_parse_ffmpeg_output_with_pdt() -> None:
    pl = parse(ffmpeg_playlist(3, 6.0, "2026-11-30T20:34:45.213+0000", end=True))
    assert pl.media_sequence == 3 and pl.version == 6 and pl.endlist
    assert pl.independent_segments
    (seg,) = pl.segments
    assert seg.uri == "seg_00003.ts" and seg.duration == 6.0
    assert seg.program_date_time == datetime(2026, 11, 30, 20, 34, 45, 213000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "#EXTM3U"),
        ("#EXTM3U\nseg.ts\n", "no #EXTINF"),
        ("#EXTM3U\n#EXTINF:abc,\nseg.ts\n", "line 2"),
        ("#EXTM3U\n#EXTINF:-1,\nseg.ts\n", "finite"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:six\n", "line 2"),
        ("#EXTM3U\n#EXT-X-PROGRAM-DATE-TIME:yesterday\n", "PROGRAM-DATE-TIME"),
    ],
)
def test_bad_playlists_say_where(text: str, needle: str) -> None:
    with pytest.raises(PlaylistError, match=needle):
        parse(text)


def test_render_parse_round_trip() -> None:
    pdt = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    pl = Playlist(
        version=6,
        target_duration=6,
        playlist_type="EVENT",
        independent_segments=True,
        endlist=True,
        segments=[Segment("seg_00000.ts", 2.0, pdt), Segment("seg_00001.ts", 5.96, None, True)],
    )
    back = parse(render(pl))
    assert back == pl
    assert "#EXT-X-DISCONTINUITY\n#EXTINF:5.960000,\nseg_00001.ts" in render(pl)


def test_validate_flags_target_duration_and_endlist() -> None:
    pl = Playlist(target_duration=6, segments=[Segment("a.ts", 6.4), Segment("b.ts", 7.6)])
    problems = validate(pl, final=True)
    assert any("b.ts" in p and "target duration" in p for p in problems)
    assert not any("a.ts" in p for p in problems)  # 6.4 rounds to 6
    assert any("ENDLIST" in p for p in problems)
    pl.endlist = True
    pl.segments = [Segment("a.ts", 6.0), Segment("a.ts", 2.0)]
    assert validate(pl, final=True) == ["a segment URI appears twice"]
    assert any("already has" in p for p in validate(pl, final=False))


def test_target_duration() -> None:
    assert target_duration_for([2.0, 2.0, 4.0, 6.0], 6.0) == 6
    assert target_duration_for([6.52], 6.0) == 7
    assert target_duration_for([], 6.0) == 6


def test_tracker_reports_each_segment_once() -> None:
    tracker = SegmentTracker()
    first = ffmpeg_playlist(0, 2.0, "2026-11-30T20:00:00.000+0000")
    assert [s.sequence for s in tracker.update(first)] == [0]
    assert tracker.update(first) == []  # same read again: nothing new
    second = ffmpeg_playlist(1, 2.0, "2026-11-30T20:00:02.000+0000")
    (seg,) = tracker.update(second)
    assert (seg.sequence, seg.uri, seg.duration, seg.inferred) == (1, "seg_00001.ts", 2.0, False)


def test_tracker_recovers_a_segment_it_never_saw() -> None:
    tracker = SegmentTracker()
    tracker.update(ffmpeg_playlist(0, 2.0, "2026-11-30T20:00:00.000+0000"))
    # seg 1 (4 s) came and went between two reads; seg 2 starts at 20:00:06.
    new = tracker.update(ffmpeg_playlist(2, 6.0, "2026-11-30T20:00:06.000+0000", end=True))
    assert [(s.sequence, s.uri, s.inferred) for s in new] == [
        (1, "seg_00001.ts", True),
        (2, "seg_00002.ts", False),
    ]
    assert new[0].duration == pytest.approx(4.0)
    assert tracker.ended


def test_tracker_ignores_half_written_reads() -> None:
    tracker = SegmentTracker()
    assert tracker.update("") == []
    assert tracker.update("#EXTM3U\n#EXTINF:2.0") == []
    assert tracker.next_sequence == 0
