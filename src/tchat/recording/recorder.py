"""One recording: FFmpeg remuxes the source to HLS on disk; closed segments go to storage.

FFmpeg (`-c copy` unless the source asks for a transcode) writes `seg_NNNNN.ts` into
a private working directory, each renamed into place only when complete
(`temp_file`). The recorder reads FFmpeg's playlist every `poll_s`, reads each
closed segment (`tsinfo`: its true duration, a new SPS = a DISCONTINUITY), notes it
in the recording's manifest (`segments.jsonl`, so a later process can finish the
upload: `resume.py`), hands it to the uploader, and publishes its own playlist
listing only segments already stored (EVENT while live, VOD + ENDLIST at the end).
If FFmpeg dies it is restarted in a fresh directory (a DISCONTINUITY marks the
seam); every completed segment is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tchat.logs import kv
from tchat.metrics import RECORDINGS_ACTIVE
from tchat.recording.catalog import Catalog, Recording, State, ended, transition
from tchat.recording.keyframes import KeyframeSchedule
from tchat.recording.playlist import (
    ClosedSegment,
    Playlist,
    Segment,
    SegmentTracker,
    render,
    target_duration_for,
)
from tchat.recording.source import Source
from tchat.recording.tsinfo import SegmentInfo, TsError, scan, sps_size
from tchat.recording.uploader import Uploader
from tchat.recording.uploadqueue import Budget, LostSegment, UploadJob, UploadQueue
from tchat.storage import ObjectStore

log = logging.getLogger("tchat.recording.recorder")
DEFAULT_FRAME_S = 1 / 30  # a segment's video of one frame, before any rate is known


@dataclass(frozen=True)
class RecorderOptions:
    ffmpeg: str = "ffmpeg"
    segment_s: float = 6.0
    # First segments end after init_s so the first upload happens within seconds.
    init_s: float = 1.0
    retention_s: float = 30 * 86400.0
    no_media_timeout_s: float = 10.0
    max_restarts: int = 3
    poll_s: float = 0.1
    stop_grace_s: float = 10.0
    finalize_timeout_s: float = 30.0
    max_buffer_bytes: int = 256 * 1024 * 1024


PROGRESS = "progress.txt"  # FFmpeg's -progress, in the run's directory
MANIFEST = "segments.jsonl"  # in the recording's working directory (resume.py reads it)


@dataclass
class SegmentUpload:
    """Per-segment figures the performance suite reports."""

    sequence: int
    key: str
    duration_s: float
    size_bytes: int
    closed_at: float
    uploaded_at: float | None = None
    attempts: int = 0

    @property
    def upload_s(self) -> float | None:
        return None if self.uploaded_at is None else self.uploaded_at - self.closed_at


async def _first(*events: asyncio.Event) -> None:
    """Until one of `events` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def ffmpeg_hls_args(opts: RecorderOptions, source: Source) -> list[str]:
    return [
        opts.ffmpeg,
        "-hide_banner",
        "-loglevel",
        "warning",
        "-nostdin",
        # what FFmpeg has read and written, each second (read back when no segment comes)
        "-progress",
        PROGRESS,
        "-stats_period",
        "1",
        *source.input_args(),
        "-map",
        "0",
        # remux only (segments cut on the source's keyframes), unless the source says
        # a stream must be transcoded (SdpSource: Opus → AAC)
        *getattr(source, "codec_args", ["-c", "copy"]),
        "-f",
        "hls",
        "-hls_time",
        f"{opts.segment_s:g}",
        "-hls_init_time",
        f"{opts.init_s:g}",
        # One entry: FFmpeg 5.1 applies hls_init_time until its list is full, and an
        # EVENT playlist never is. We keep the full list ourselves (SegmentTracker).
        "-hls_list_size",
        "1",
        "-hls_flags",
        "temp_file+program_date_time+independent_segments",
        "-hls_segment_filename",
        "seg_%05d.ts",
        "index.m3u8",
    ]


def describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


@dataclass
class _Run:
    index: int
    directory: Path
    tracker: SegmentTracker = field(default_factory=SegmentTracker)
    started_at: float = 0.0
    media_start: float | None = None  # wall time of the run's first packet (first PDT)
    media_at: float | None = None  # when the source first reported media sent to FFmpeg
    keyframes: KeyframeSchedule | None = None
    cpu_s: float = 0.0
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=8))


class Recorder:
    def __init__(
        self,
        *,
        room: str,
        source: Source,
        store: ObjectStore,
        catalog: Catalog,
        workdir: Path,
        options: RecorderOptions,
        clock: Callable[[], float] = time.time,
        rec_id: str | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.id = rec_id or uuid.uuid4().hex[:16]
        self.room = room
        self.source = source
        self.store = store
        self.catalog = catalog
        self.workdir = workdir.absolute() / self.id
        self.opts = options
        self.clock = clock
        self.queue = UploadQueue(options.max_buffer_bytes, budget=budget)
        self.uploader = Uploader(store, self.queue, self._uploaded, clock)
        self.segments: list[SegmentUpload] = []
        self.published: list[Segment] = []
        self._pending: dict[str, Segment] = {}
        self._discontinuity_next = False
        self._frame_s = DEFAULT_FRAME_S  # the video's frame interval, from the segments so far
        self._last_sps: bytes | None = None  # of the last segment: a new one is a new layer
        self.video_sizes: list[tuple[int, str]] = []  # (segment, "W×H") at each change
        self._final = False
        self.events: list[str] = []
        self.restarts = 0
        self.pid: int | None = None
        self.ffmpeg_cpu_s = 0.0
        self.first_segment_uploaded_at: float | None = None
        self.stop_requested_at: float | None = None
        self.available_at: float | None = None
        self._stop = asyncio.Event()
        self._cut = asyncio.Event()
        self.idle = False  # a live input went quiet: no FFmpeg runs until it goes on
        self._task: asyncio.Task[Recording] | None = None
        self.recording = Recording(self.id, room, "recording", started_at=clock())

    # --- public -----------------------------------------------------------------------
    def start(self) -> Recorder:
        self.catalog.put(self.recording)
        self._task = asyncio.create_task(self._main(), name=f"recorder-{self.id}")
        return self

    def stop(self) -> None:
        """The stream ended: finish the current segment, finalize, make it available."""
        if self.stop_requested_at is None:
            self.stop_requested_at = self.clock()
        self._stop.set()

    def cut(self) -> None:
        """The stream goes on from another source (its publisher came back): close this
        FFmpeg run and go on in a new one, whose first segment starts a discontinuity."""
        self._cut.set()

    async def wait(self) -> Recording:
        assert self._task is not None
        return await self._task

    def on_done(self, callback: Callable[[Recorder], None]) -> None:
        assert self._task is not None
        self._task.add_done_callback(lambda _: callback(self))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- upload callbacks -------------------------------------------------------------
    def _uploaded(self, job: UploadJob, at: float) -> None:
        if job.kind != "segment":
            return
        seg = self._pending.pop(job.key)
        self.published.append(seg)
        stats = self.segments[job.sequence]
        stats.uploaded_at, stats.attempts = at, job.attempts + 1
        if self.first_segment_uploaded_at is None:
            self.first_segment_uploaded_at = at
            log.info(
                "first segment stored",
                extra=kv(id=self.id, after_s=round(at - self.recording.started_at, 3)),
            )
        # Once finalizing, every republished playlist is the final one (ENDLIST).
        self._publish_playlist(final=self._final)

    def _playlist(self, final: bool) -> Playlist:
        durations = [s.duration for s in self.published]
        return Playlist(
            version=6,
            target_duration=target_duration_for(durations, self.opts.segment_s),
            media_sequence=0,
            # EVENT while segments are added; once complete a player expects VOD
            playlist_type="VOD" if final else "EVENT",
            independent_segments=True,
            endlist=final,
            segments=list(self.published),
        )

    def _publish_playlist(self, final: bool) -> None:
        body = render(self._playlist(final)).encode()
        self.uploader.submit(
            UploadJob(self.recording.playlist_key, "playlist", len(body), self.clock(), data=body)
        )

    # --- segments ---------------------------------------------------------------------
    async def _scan(self, run: _Run) -> None:
        try:
            text = (run.directory / "index.m3u8").read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            return
        new = run.tracker.update(text)
        for i, closed in enumerate(new):
            # FFmpeg lists its last segment with ENDLIST: that one ends with the audio
            await self._segment_closed(run, closed, last=run.tracker.ended and i == len(new) - 1)

    def _journal(self, entry: dict[str, object]) -> None:
        """One line of the manifest; what a later process needs to finish the upload."""
        try:
            with open(self.workdir / MANIFEST, "a") as f:
                f.write(json.dumps(entry, separators=(",", ":")) + "\n")
        except OSError as exc:
            log.error("manifest not written", extra=kv(id=self.id, error=str(exc)))

    def _layer_change(self, info: SegmentInfo | None, n: int) -> bool:
        """True if segment n starts with another SPS than the last one (a layer change);
        logs each video size the recording takes."""
        if info is None or not info.sps:
            return False
        sizes = []
        for sps in info.sps:
            with contextlib.suppress(TsError, IndexError):
                w, h = sps_size(sps)
                sizes.append(f"{w}×{h}")
        changed = self._last_sps is not None and info.sps[0] != self._last_sps
        if sizes and (not self.video_sizes or self.video_sizes[-1][1] != sizes[0]):
            if self.video_sizes:
                self.events.append(
                    f"video {self.video_sizes[-1][1]} → {sizes[0]} at segment {n}"
                    + (" (discontinuity)" if changed else "")
                )
            self.video_sizes.append((n, sizes[0]))
            log.info("recording video", extra=kv(id=self.id, segment=n, size=sizes[0]))
        if len(set(sizes)) > 1:  # not at a boundary: players see it in-band only
            self.events.append(f"video size changed inside segment {n}: {' → '.join(sizes)}")
            self.video_sizes.append((n, sizes[-1]))
            log.warning("layer change inside a segment", extra=kv(id=self.id, segment=n))
        self._last_sps = info.sps[-1]
        return changed

    async def _segment_closed(self, run: _Run, closed: ClosedSegment, *, last: bool) -> None:
        path = run.directory / closed.uri
        try:
            stat = path.stat()
        except FileNotFoundError:
            # Listed by FFmpeg but gone: reported as lost (the recording ends failed, saying
            # so) and the next segment starts a discontinuity, never a silent gap.
            self.events.append(f"segment {closed.uri} of run {run.index} missing on disk")
            self.queue.lost.append(
                LostSegment(closed.uri, len(self.segments), "closed segment missing on disk")
            )
            self._discontinuity_next = True
            return
        if stat.st_size == 0:
            # listed by an FFmpeg stopped before any media of its run arrived (the stream
            # resumed and ended at once): nothing to play, so nothing to list
            path.unlink(missing_ok=True)
            return
        if run.media_start is None and closed.program_date_time is not None:
            run.media_start = closed.program_date_time.timestamp()
        info = await asyncio.to_thread(_read_info, path)
        n = len(self.segments)
        name = f"seg_{n:05d}.ts"
        key = self.recording.prefix + name
        # the media's own span (FFmpeg's last EXTINF can be wrong by most of a segment; it
        # gave 6 s to a last segment of one keyframe, opened just before the stop)
        duration = info.duration(last=last, frame_s=self._frame_s) if info is not None else 0.0
        if info is not None and info.frame_interval > 0:
            self._frame_s = info.frame_interval
        if duration <= 0:
            duration = closed.duration if closed.duration > 0 else self.opts.segment_s
        discontinuity = self._layer_change(info, n) or self._discontinuity_next
        seg = Segment(name, round(duration, 6), closed.program_date_time, discontinuity)
        self._discontinuity_next = False
        self.segments.append(SegmentUpload(n, key, seg.duration, stat.st_size, stat.st_mtime))
        job = UploadJob(key, "segment", stat.st_size, stat.st_mtime, path=path, sequence=n)
        if self.uploader.submit(job):
            self._pending[key] = seg
            pdt = seg.program_date_time.isoformat() if seg.program_date_time else None
            self._journal(
                {"n": n, "key": key, "file": str(path.relative_to(self.workdir)),
                 "duration": seg.duration, "pdt": pdt, "disc": discontinuity,
                 "size": stat.st_size}
            )  # fmt: skip
        else:
            # Refused by the bounded buffer: reported in the catalog, never silent.
            path.unlink(missing_ok=True)
            self._discontinuity_next = True
            reason = self.queue.lost[-1].reason if self.queue.lost else "refused"
            self._journal({"n": n, "key": key, "lost": reason})
            log.error("segment lost", extra=kv(id=self.id, key=key, reason=reason))

    # --- FFmpeg -----------------------------------------------------------------------
    async def _read_stderr(self, proc: asyncio.subprocess.Process, run: _Run) -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            text = line.decode(errors="replace").strip()
            if text:
                run.stderr.append(text)

    def _sample_cpu(self, pid: int, run: _Run) -> None:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            run.cpu_s = t.user + t.system

    async def _run_ffmpeg(self, run: _Run) -> int:
        run.directory.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            *ffmpeg_hls_args(self.opts, self.source),
            cwd=run.directory,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self.pid = proc.pid
        run.started_at = self.clock()
        run.keyframes = KeyframeSchedule(self.opts.init_s, self.opts.segment_s)
        self.source.run_started()
        reader = asyncio.create_task(self._read_stderr(proc, run))
        waiter = asyncio.create_task(proc.wait())
        signalled_at: float | None = None
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=self.opts.poll_s)
                await self._scan(run)
                if waiter.done():
                    break
                self._sample_cpu(proc.pid, run)
                now = self.clock()
                # FFmpeg's boundaries are on its media timeline: the source may know where
                # that is; else wall time since the first segment's start (or FFmpeg's)
                stream_t = self.source.stream_time()
                if stream_t and run.media_at is None:
                    run.media_at = now  # media reaches FFmpeg from now on
                if stream_t is None:
                    stream_t = now - (run.media_start or run.started_at)
                if run.keyframes.due(stream_t):
                    self.source.request_keyframe()
                # no segment this long after the start — or after the media began to
                # reach FFmpeg, when the source says so (a slow FFmpeg start-up on a busy
                # machine is not the publisher's silence)
                since = max(self.recording.started_at, run.media_at or 0.0)
                if not self.segments and now - since > self.opts.no_media_timeout_s:
                    raise _NoMedia()
                if (self._stop.is_set() or self._cut.is_set()) and signalled_at is None:
                    proc.send_signal(signal.SIGTERM)  # FFmpeg closes the segment, writes ENDLIST
                    signalled_at = now
                elif signalled_at is not None and now - signalled_at > self.opts.stop_grace_s:
                    proc.kill()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            await reader
            await self._scan(run)
            self.ffmpeg_cpu_s += run.cpu_s
        return proc.returncode if proc.returncode is not None else -1

    async def _record(self) -> str:
        """Run FFmpeg until the stream ends; returns '' or why the recording failed."""
        index = 0
        said = ""  # FFmpeg's last words over all runs (a new run may not have spoken yet)
        while True:
            run = _Run(index, self.workdir / f"run-{index}")
            try:
                rc = await self._run_ffmpeg(run)
            except _NoMedia:
                said = run.stderr[-1] if run.stderr else said
                log.warning(
                    "no media",
                    extra=kv(
                        id=self.id,
                        runs=index + 1,
                        media_after_s=_since(run.media_at, self.recording.started_at),
                        source=self.source.describe(),
                        ffmpeg=" | ".join(run.stderr) or said,
                        progress=_progress(run.directory / PROGRESS),
                    ),
                )
                return f"no media received within {self.opts.no_media_timeout_s:g}s" + (
                    f" (ffmpeg: {said})" if said else ""
                )
            said = run.stderr[-1] if run.stderr else said
            live = getattr(self.source, "live", False)
            if rc == 0 and live and self.segments and not self._stop.is_set():
                # a live input went quiet (its publisher stalled or was lost): the stream
                # has not ended; wait until it is stopped or goes on (cut), no FFmpeg
                self.idle = True
                await _first(self._stop, self._cut)
                self.idle = False
            if self._cut.is_set() and not self._stop.is_set():
                self._cut.clear()  # a planned new run (cut): not a failure
                self._discontinuity_next = True
                index += 1
                continue
            if self._stop.is_set() or rc == 0:
                return ""  # stopped, or the input ended on its own
            tail = " | ".join(list(run.stderr)[-2:])
            if not self.segments:
                # Nothing arrived yet (FFmpeg gives up on a silent input): keep
                # waiting until the no-media timeout says otherwise.
                log.info(
                    "ffmpeg run ended before any segment",
                    extra=kv(id=self.id, run=index, exit=describe_exit(rc), ffmpeg=tail),
                )
                await asyncio.sleep(0.2)
                index += 1
                continue
            self.restarts += 1
            event = f"ffmpeg run {index} ended with {describe_exit(rc)}" + (
                f" ({tail})" if tail else ""
            )
            self.events.append(event)
            log.warning("ffmpeg died", extra=kv(id=self.id, rc=rc, restarts=self.restarts))
            if self.restarts > self.opts.max_restarts:
                return f"ffmpeg failed {self.restarts} times; last: {event}"
            self._discontinuity_next = True
            index += 1

    async def _main(self) -> Recording:
        RECORDINGS_ACTIVE.inc()
        upload_task = asyncio.create_task(self.uploader.run())
        try:
            failure = await self._record()
            end = self.stop_requested_at or self.clock()
            if not self.segments:
                # Nothing to make available: an empty VOD would only mislead.
                failure = failure or "the stream ended before any media was recorded"
                return self._finish(
                    ended(self.recording, "failed", end, self.opts.retention_s, detail=failure)
                )
            self.recording = transition(self.recording, "finalizing", ended_at=end)
            self.catalog.put(self.recording)
            self._final = True
            self._publish_playlist(final=True)
            drained = await self.uploader.drain(self.opts.finalize_timeout_s)
            detail = self._detail(failure, drained)
            state: State = (
                "available" if drained and not failure and not self.queue.lost else "failed"
            )
            if state == "available":
                self.available_at = self.clock()
            return self._finish(
                ended(
                    self.recording,
                    state,
                    end,
                    self.opts.retention_s,
                    detail=detail,
                    duration_s=round(sum(s.duration for s in self.published), 3),
                    segment_count=len(self.published),
                    size_bytes=sum(s.size_bytes for s in self.segments if s.uploaded_at),
                )
            )
        except BaseException as exc:
            end = self.stop_requested_at or self.clock()
            with contextlib.suppress(Exception):
                self._finish(
                    ended(
                        self.recording,
                        "failed",
                        end,
                        self.opts.retention_s,
                        detail=f"recorder crashed: {exc!r}"[:500],
                        segment_count=len(self.published),
                    )
                )
            raise
        finally:
            upload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upload_task
            RECORDINGS_ACTIVE.dec()

    def _detail(self, failure: str, drained: bool) -> str:
        parts = [failure] if failure else []
        parts += self.events
        if self.queue.lost:
            keys = ", ".join(s.key.rsplit("/", 1)[-1] for s in self.queue.lost)
            parts.append(
                f"{len(self.queue.lost)} segments lost ({keys}): {self.queue.lost[0].reason}"
            )
        if not drained:
            waiting = self.queue.pending_segments()
            err = self.queue.jobs[0].last_error if self.queue.jobs else ""
            parts.append(
                f"{len(waiting)} segments not stored after {self.opts.finalize_timeout_s:g}s "
                f"(kept in {self.workdir}); storage: {err}"
            )
        return "; ".join(parts)

    def _finish(self, rec: Recording) -> Recording:
        self.recording = rec
        self.catalog.put(rec)
        if rec.state == "available" or (rec.state == "failed" and self.queue.empty):
            shutil.rmtree(self.workdir, ignore_errors=True)
        log.info(
            "recording ended",
            extra=kv(
                id=rec.id,
                room=rec.room,
                state=rec.state,
                segments=rec.segment_count,
                detail=rec.detail,
            ),
        )
        return rec


class _NoMedia(Exception):
    pass


def _progress(path: Path) -> str:
    """FFmpeg's last -progress report: frames, output time and size written."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "none written"
    last: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition("=")
        last[key] = value
    keys = ("frame", "out_time", "total_size", "progress")
    return " ".join(f"{k}={last[k]}" for k in keys if k in last) or "empty"


def _since(t: float | None, start: float) -> float | None:
    return None if t is None else round(t - start, 3)


def _read_info(path: Path) -> SegmentInfo | None:
    try:
        return scan(path.read_bytes())
    except (OSError, TsError) as exc:
        log.warning("segment not readable", extra=kv(path=str(path), error=str(exc)))
        return None
