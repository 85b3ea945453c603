"""Upload queue policy, sans I/O: order, retry backoff, a bounded on-disk buffer.

Jobs upload strictly in order (a playlist never goes up before the segments it
lists). A failed job stays at the head and is retried after an exponential
backoff; while storage is down, closed segments wait on disk until the buffer
limit, after which a new segment is refused and reported as lost, never dropped
silently. Only the newest playlist matters, so a queued playlist is replaced.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["segment", "playlist"]
# The global disk budget (shared by every recording): given a new segment's size, None
# if it may wait on disk, else why not.
Budget = Callable[[int], str | None]


@dataclass(slots=True)
class UploadJob:
    key: str
    kind: Kind
    size: int
    closed_at: float  # when the object became final (segment closed / playlist rendered)
    path: Path | None = None  # segment file on disk
    data: bytes | None = None  # playlist body
    sequence: int = -1
    attempts: int = 0
    not_before: float = 0.0
    last_error: str = ""


@dataclass(slots=True)
class LostSegment:
    key: str
    sequence: int
    reason: str


@dataclass
class UploadQueue:
    max_buffer_bytes: int
    budget: Budget | None = None
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 8.0
    jobs: deque[UploadJob] = field(default_factory=deque)
    lost: list[LostSegment] = field(default_factory=list)
    in_flight: UploadJob | None = None

    @property
    def buffered_bytes(self) -> int:
        return sum(j.size for j in self.jobs if j.kind == "segment")

    def add(self, job: UploadJob) -> bool:
        """Queue job; False (and the segment recorded as lost) if the buffer is full."""
        if job.kind == "playlist":
            self.jobs = deque(j for j in self.jobs if j.kind != "playlist" or j is self.in_flight)
            self.jobs.append(job)
            return True
        if self.buffered_bytes + job.size > self.max_buffer_bytes:
            self.lost.append(
                LostSegment(
                    job.key,
                    job.sequence,
                    f"upload buffer full ({self.buffered_bytes} of {self.max_buffer_bytes} "
                    f"bytes waiting for storage)",
                )
            )
            return False
        refused = self.budget(job.size) if self.budget is not None else None
        if refused is not None:
            self.lost.append(LostSegment(job.key, job.sequence, refused))
            return False
        self.jobs.append(job)
        return True

    def take(self, now: float) -> UploadJob | None:
        """The head job if it may be tried now; it stays queued until done()."""
        if self.in_flight is not None or not self.jobs:
            return None
        head = self.jobs[0]
        if head.not_before > now:
            return None
        self.in_flight = head
        return head

    def done(self, job: UploadJob) -> None:
        self.jobs.remove(job)
        self.in_flight = None

    def failed(self, job: UploadJob, now: float, error: str) -> float:
        """Schedule a retry; returns the delay chosen."""
        job.attempts += 1
        job.last_error = error
        delay = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** (job.attempts - 1))
        job.not_before = now + delay
        self.in_flight = None
        return delay

    def next_timer(self) -> float | None:
        """When the head job may be tried (None: nothing queued or one in flight)."""
        if self.in_flight is not None or not self.jobs:
            return None
        return self.jobs[0].not_before

    def pending_segments(self) -> list[UploadJob]:
        return [j for j in self.jobs if j.kind == "segment"]

    @property
    def empty(self) -> bool:
        return not self.jobs
