"""HLS media playlists, sans I/O: parse, validate, render, and track FFmpeg's output.

`SegmentTracker` turns successive reads of the playlist FFmpeg keeps rewriting into
"segment N closed" events. FFmpeg runs with a one-entry list (its `hls_init_time`
only ends after the list fills; see docs/recording.md), so a segment that came and
went between two reads is recovered from the media sequence, its duration taken
from the program-date-times around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime


class PlaylistError(ValueError):
    """The text is not a media playlist we can use; the message says where."""


@dataclass(frozen=True, slots=True)
class Segment:
    uri: str
    duration: float
    program_date_time: datetime | None = None
    discontinuity: bool = False


@dataclass(slots=True)
class Playlist:
    version: int = 3
    target_duration: int = 0
    media_sequence: int = 0
    playlist_type: str | None = None
    independent_segments: bool = False
    endlist: bool = False
    segments: list[Segment] = field(default_factory=list)


def _attr(line: str) -> str:
    return line.split(":", 1)[1].strip() if ":" in line else ""


def parse_pdt(value: str) -> datetime:
    # FFmpeg writes +0000; ISO 8601 / RFC 3339 allow +00:00 or Z.
    text = value.strip().replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise PlaylistError(f"bad EXT-X-PROGRAM-DATE-TIME {value!r}") from None


def parse(text: str) -> Playlist:
    """Parse a media playlist; raises PlaylistError naming the bad line."""
    lines = [ln.strip() for ln in text.splitlines()]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError("playlist does not start with #EXTM3U")
    pl = Playlist()
    duration: float | None = None
    pdt: datetime | None = None
    disc = False
    for no, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        try:
            if line.startswith("#EXT-X-VERSION:"):
                pl.version = int(_attr(line))
            elif line.startswith("#EXT-X-TARGETDURATION:"):
                pl.target_duration = int(_attr(line))
            elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                pl.media_sequence = int(_attr(line))
            elif line.startswith("#EXT-X-PLAYLIST-TYPE:"):
                pl.playlist_type = _attr(line)
            elif line == "#EXT-X-INDEPENDENT-SEGMENTS":
                pl.independent_segments = True
            elif line == "#EXT-X-ENDLIST":
                pl.endlist = True
            elif line == "#EXT-X-DISCONTINUITY":
                disc = True
            elif line.startswith("#EXTINF:"):
                duration = float(_attr(line).split(",", 1)[0])
                if not math.isfinite(duration) or duration < 0:
                    raise ValueError("duration must be a finite number >= 0")
            elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
                pdt = parse_pdt(_attr(line))
            elif line.startswith("#"):
                continue  # other tags and comments do not concern us
            else:
                if duration is None:
                    raise PlaylistError(f"line {no}: segment {line!r} has no #EXTINF")
                pl.segments.append(Segment(line, duration, pdt, disc))
                duration, pdt, disc = None, None, False
        except PlaylistError:
            raise
        except ValueError as exc:
            raise PlaylistError(f"line {no}: {line!r}: {exc}") from None
    return pl


def target_duration_for(durations: list[float], configured: float) -> int:
    """EXT-X-TARGETDURATION: an integer no segment's rounded duration exceeds."""
    return max([round(d) for d in durations] + [math.ceil(configured - 0.001)])


def render(pl: Playlist) -> str:
    out = ["#EXTM3U", f"#EXT-X-VERSION:{pl.version}"]
    out.append(f"#EXT-X-TARGETDURATION:{pl.target_duration}")
    out.append(f"#EXT-X-MEDIA-SEQUENCE:{pl.media_sequence}")
    if pl.playlist_type:
        out.append(f"#EXT-X-PLAYLIST-TYPE:{pl.playlist_type}")
    if pl.independent_segments:
        out.append("#EXT-X-INDEPENDENT-SEGMENTS")
    for seg in pl.segments:
        if seg.discontinuity:
            out.append("#EXT-X-DISCONTINUITY")
        if seg.program_date_time is not None:
            pdt = seg.program_date_time.isoformat(timespec="milliseconds")
            out.append(f"#EXT-X-PROGRAM-DATE-TIME:{pdt}")
        out.append(f"#EXTINF:{seg.duration:.6f},")
        out.append(seg.uri)
    if pl.endlist:
        out.append("#EXT-X-ENDLIST")
    return "\n".join(out) + "\n"


def validate(pl: Playlist, *, final: bool) -> list[str]:
    """Problems that make the playlist wrong for playback (empty list: valid)."""
    problems = []
    if pl.target_duration < 1:
        problems.append("EXT-X-TARGETDURATION missing or < 1")
    for i, seg in enumerate(pl.segments):
        if round(seg.duration) > pl.target_duration:
            problems.append(
                f"segment {i} ({seg.uri}) lasts {seg.duration:.3f}s, over the target "
                f"duration {pl.target_duration}s"
            )
        if seg.duration <= 0:
            problems.append(f"segment {i} ({seg.uri}) has duration {seg.duration}")
    uris = [s.uri for s in pl.segments]
    if len(set(uris)) != len(uris):
        problems.append("a segment URI appears twice")
    if final and not pl.endlist:
        problems.append("final playlist lacks #EXT-X-ENDLIST")
    if not final and pl.endlist:
        problems.append("live playlist already has #EXT-X-ENDLIST")
    if final and not pl.segments:
        problems.append("final playlist has no segments")
    return problems


@dataclass(frozen=True, slots=True)
class ClosedSegment:
    """A segment FFmpeg has finished writing (its file is complete and renamed)."""

    sequence: int
    uri: str
    duration: float
    program_date_time: datetime | None
    inferred: bool = False  # duration worked out from the neighbours' PDT


class SegmentTracker:
    """Feed it each read of FFmpeg's playlist; it returns newly closed segments once."""

    def __init__(self, uri_pattern: str = "seg_{:05d}.ts") -> None:
        self.uri_pattern = uri_pattern
        self.next_sequence = 0
        self.ended = False
        self._last: ClosedSegment | None = None

    def update(self, text: str) -> list[ClosedSegment]:
        try:
            pl = parse(text)
        except PlaylistError:
            return []  # caught mid-write or empty: the next read will do
        new: list[ClosedSegment] = []
        first = pl.media_sequence
        if pl.segments and first > self.next_sequence:
            # Entries that scrolled out of FFmpeg's short list before we looked.
            start_pdt = pl.segments[0].program_date_time
            missed = first - self.next_sequence
            gap = self._gap_seconds(start_pdt)
            for k in range(missed):
                seq = self.next_sequence + k
                new.append(
                    ClosedSegment(
                        seq,
                        self.uri_pattern.format(seq),
                        gap / missed if gap is not None else 0.0,
                        None,
                        inferred=True,
                    )
                )
        for offset, seg in enumerate(pl.segments):
            seq = first + offset
            if seq < self.next_sequence:
                continue
            new.append(ClosedSegment(seq, seg.uri, seg.duration, seg.program_date_time))
        if new:
            self.next_sequence = new[-1].sequence + 1
            self._last = new[-1]
        self.ended = self.ended or pl.endlist
        return new

    def _gap_seconds(self, next_pdt: datetime | None) -> float | None:
        last = self._last
        if last is None or last.program_date_time is None or next_pdt is None:
            return None
        end = last.program_date_time.timestamp() + last.duration
        return max(0.0, next_pdt.timestamp() - end)
