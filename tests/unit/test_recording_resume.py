"""The manifest of a recording left behind, its final playlist, the disk budget."""

from __future__ import annotations

from pathlib import Path

from tchat.recording.playlist import parse, validate
from tchat.recording.resume import DiskBudget, final_playlist, read_manifest

LINES = [
    '{"n":0,"key":"recordings/r/seg_00000.ts","file":"run-0/seg_00000.ts","duration":2.0,'
    '"pdt":"2026-01-01T00:00:00+00:00","disc":false,"size":100}',
    '{"n":1,"key":"recordings/r/seg_00001.ts","lost":"upload buffer full"}',
    '{"n":2,"key":"recordings/r/seg_00002.ts","file":"run-0/seg_00002.ts","duration":6.0,'
    '"pdt":"2026-01-01T00:00:04+00:00","disc":false,"size":300}',
    '{"n":3,"key":"recordings/r/seg_00003.ts","file":"run-1/seg_00000.ts","duration":1.5,'
    '"pdt":null,"disc":true,"size":50}',
    '{"n":4,"key":"recordings/r/seg_000',  # the process died mid-write
]


def test_manifest_survives_a_torn_last_line_and_keeps_order() -> None:
    m = read_manifest("\n".join([LINES[2], LINES[0], LINES[1], LINES[3], LINES[0], LINES[4]]))
    assert [e.n for e in m.entries] == [0, 1, 2, 3]  # sorted, duplicates and torn line out
    assert [e.n for e in m.kept] == [0, 2, 3] and [e.lost for e in m.lost] == ["upload buffer full"]
    assert m.entries[0].pdt is not None and m.entries[3].file == "run-1/seg_00000.ts"


def test_final_playlist_is_vod_with_a_discontinuity_where_a_segment_is_missing() -> None:
    pl = parse(final_playlist(read_manifest("\n".join(LINES)), 6.0).decode())
    assert pl.playlist_type == "VOD" and pl.endlist and validate(pl, final=True) == []
    assert [s.uri for s in pl.segments] == ["seg_00000.ts", "seg_00002.ts", "seg_00003.ts"]
    assert [s.discontinuity for s in pl.segments] == [False, True, True]
    assert [s.duration for s in pl.segments] == [2.0, 6.0, 1.5]


def test_disk_budget_counts_every_recordings_waiting_segments(tmp_path: Path) -> None:
    budget = DiskBudget(tmp_path, limit=1000)
    for rec, run, size in (("a", 0, 400), ("a", 1, 300), ("b", 0, 200)):
        d = tmp_path / rec / f"run-{run}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"seg_{size}.ts").write_bytes(bytes(size))
    (tmp_path / "a" / "run-0" / "seg_9.ts.tmp").write_bytes(bytes(5000))  # being written
    assert budget.used() == 900 and budget(200) is None
    (tmp_path / "b" / "run-0" / "seg_x.ts").write_bytes(bytes(200))
    reason = budget(200)
    assert reason is not None and "RECORDING_DISK_BUDGET_BYTES=1000" in reason and "1100" in reason
