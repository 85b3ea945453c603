"""When to ask the source for a keyframe, sans I/O.

With `-c copy` FFmpeg can only cut a segment on a keyframe: it closes a segment
at the first keyframe whose timestamp is at or past the segment's planned end.
A browser publisher sends keyframes rarely (often only on request), so the
recorder asks for one (the SFU turns that into an RTCP PLI upstream) just after
each planned boundary. The boundaries follow FFmpeg 5.1's hls muxer with a
one-entry list: `init`, `2·init`, then `init + k·segment` (docs/recording.md).
"""

from __future__ import annotations

from collections.abc import Iterator


def segment_boundaries(init_s: float, segment_s: float) -> Iterator[float]:
    """Stream times (s from the first packet) at which FFmpeg wants to cut."""
    yield init_s
    yield 2 * init_s
    k = 1
    while True:
        boundary = init_s + k * segment_s
        if boundary > 2 * init_s:
            yield boundary
        k += 1


class KeyframeSchedule:
    """Call `due(t)` with the stream time; True once per boundary (and once at t=0).

    `margin_s` puts the request just after the boundary: a keyframe stamped a few
    ms before it would not cut, and the segment would run on to the next one.
    """

    def __init__(self, init_s: float, segment_s: float, margin_s: float = 0.05) -> None:
        self._boundaries = segment_boundaries(init_s, segment_s)
        self._next = -margin_s  # a keyframe at the very start so FFmpeg can begin
        self.margin_s = margin_s

    @property
    def next_request_at(self) -> float:
        return self._next + self.margin_s

    def due(self, stream_t: float) -> bool:
        if stream_t < self.next_request_at:
            return False
        while self._next + self.margin_s <= stream_t:
            self._next = next(self._boundaries)
        return True
