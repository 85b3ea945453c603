"""What ffprobe says about a finished recording's segments, and the HLS checks the
recording tests share: durations within one frame of the media, one picture size
per segment, a discontinuity exactly where the size changes, VOD + ENDLIST."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tchat.recording.playlist import Playlist, parse, validate

FFPROBE = "ffprobe"


@dataclass
class Probed:
    path: Path
    start: float  # first timestamp of any stream
    end: float  # end of the last packet of any stream (pts + duration)
    video_start: float
    audio_start: float | None
    frame_s: float  # the video's frame interval (median; 0.0: one frame, no interval)
    sizes: list[tuple[int, int]]  # picture sizes in decode order, consecutive repeats merged
    audio_codec: str | None
    video_codec: str

    @property
    def span(self) -> float:
        return self.end - self.start


def _run(*args: str) -> str:
    proc = subprocess.run([FFPROBE, "-v", "error", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def probe(path: Path) -> Probed:
    info = json.loads(_run("-show_streams", "-show_packets", "-of", "json", str(path)))
    kinds = {s["index"]: s["codec_type"] for s in info["streams"]}
    codecs = {s["codec_type"]: s["codec_name"] for s in info["streams"]}
    starts: dict[str, float] = {}
    ends: list[float] = []
    video_pts: list[float] = []
    for p in info["packets"]:
        if "pts_time" not in p:
            continue
        kind = kinds[p["stream_index"]]
        pts = float(p["pts_time"])
        starts[kind] = min(starts.get(kind, pts), pts)
        ends.append(pts + float(p.get("duration_time", 0) or 0))
        if kind == "video":
            video_pts.append(pts)
    video_pts.sort()
    steps = sorted(b - a for a, b in itertools.pairwise(video_pts) if b > a)
    shown = _run("-select_streams", "v", "-show_entries", "frame=width,height", "-of", "json",
                 str(path))  # fmt: skip
    frames = json.loads(shown)["frames"]
    sizes: list[tuple[int, int]] = []
    for f in frames:
        size = (int(f["width"]), int(f["height"]))
        if not sizes or sizes[-1] != size:
            sizes.append(size)
    return Probed(
        path=path,
        start=min(starts.values()),
        end=max(ends),
        video_start=starts["video"],
        audio_start=starts.get("audio"),
        frame_s=steps[len(steps) // 2] if steps else 0.0,
        sizes=sizes,
        audio_codec=codecs.get("audio"),
        video_codec=codecs["video"],
    )


async def probe_all(paths: list[Path]) -> list[Probed]:
    return [await asyncio.to_thread(probe, p) for p in paths]


def check_recording(playlist_text: str, probed: list[Probed]) -> Playlist:
    """The finished playlist is VOD + ENDLIST and valid; each #EXTINF is within one frame
    of its segment's media; each segment has one picture size, and a discontinuity sits
    exactly where the size changes. Returns the parsed playlist."""
    pl = parse(playlist_text)
    assert pl.playlist_type == "VOD" and pl.endlist, playlist_text
    assert validate(pl, final=True) == [], validate(pl, final=True)
    assert len(pl.segments) == len(probed)
    # a segment of one frame (cut at a keyframe just before the stop) has no interval of
    # its own: it lasts a frame of the recording's rate (the rate may vary: the longest)
    recording_frame = max((m.frame_s for m in probed if m.frame_s), default=0.04)
    for i, (seg, media) in enumerate(zip(pl.segments, probed, strict=True)):
        frame = media.frame_s or recording_frame
        assert abs(seg.duration - media.span) <= frame + 0.002, (
            f"segment {i}: EXTINF {seg.duration:.6f} but the media lasts {media.span:.6f} "
            f"(frame {frame:.3f}s)"
        )
        assert len(media.sizes) == 1, f"segment {i} changes size inside: {media.sizes}"
        changed = i > 0 and media.sizes[0] != probed[i - 1].sizes[-1]
        assert seg.discontinuity == changed, (
            f"segment {i}: discontinuity={seg.discontinuity} but size "
            f"{probed[i - 1].sizes[-1] if i else None} → {media.sizes[0]}"
        )
    return pl
