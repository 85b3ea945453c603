"""RecordingService: the store, the catalog, the live recorders and the sweeper of one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from functools import partial

from tchat.aio import cancel_and_wait
from tchat.config import Settings
from tchat.logs import kv
from tchat.recording.catalog import Catalog, Recording, UnknownRecording, ended
from tchat.recording.recorder import Recorder, RecorderOptions
from tchat.recording.resume import MANIFEST, DiskBudget, Resumer
from tchat.recording.retention import Sweeper, lifecycle_days
from tchat.recording.source import Source
from tchat.rooms import check_room
from tchat.storage import LifecycleResult, ObjectStore, StoreError, open_store

log = logging.getLogger("tchat.recording")

RECORDINGS_PREFIX = "recordings/"
SWEEP_INTERVAL_S = 600.0
STORAGE_START_WAIT_S = 3.0  # start-up waits this long for storage, then goes on


def options_from(settings: Settings) -> RecorderOptions:
    return RecorderOptions(
        ffmpeg=settings.ffmpeg,
        segment_s=settings.recording_segment_seconds,
        init_s=min(settings.recording_first_segment_seconds, settings.recording_segment_seconds),
        retention_s=settings.recording_retention,
        no_media_timeout_s=settings.recording_no_media_timeout,
        max_buffer_bytes=settings.recording_upload_buffer_bytes,
    )


class RecordingService:
    def __init__(
        self,
        settings: Settings,
        *,
        store: ObjectStore | None = None,
        options: RecorderOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.options = options or options_from(settings)
        self.clock = clock
        self.catalog = Catalog(settings.data_dir / "recordings.sqlite3")
        self.workdir = settings.data_dir / "recorder"
        self.budget = DiskBudget(self.workdir, settings.recording_disk_budget_bytes)
        self.sweeper = Sweeper(self.catalog, self.store, clock)
        self.recorders: dict[str, Recorder] = {}
        self.resuming: dict[str, asyncio.Task[Recording]] = {}
        self.lifecycle: LifecycleResult | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._resumes = False  # only the process that owns the catalog resumes (open())
        self._storage_task: asyncio.Task[None] | None = None

    async def open(
        self, *, sweep_interval_s: float | None = SWEEP_INTERVAL_S, fail_orphans: bool = True
    ) -> None:
        """Ready the store; storage being down is logged, not fatal (uploads queue).
        `fail_orphans=False` for an SFU instance process, which shares the catalog with
        the server and its sibling instances: their live recordings are not orphans."""
        try:
            # storage down must not hold the server's start: the check goes on behind
            await asyncio.wait_for(asyncio.shield(self._storage_check()), STORAGE_START_WAIT_S)
        except TimeoutError:
            log.error(
                "storage did not answer at start-up; checked again in the background",
                extra=kv(store=self.store.name, waited_s=STORAGE_START_WAIT_S),
            )
        if fail_orphans:
            self._fail_orphans()
            self.resume_left_behind()
        if sweep_interval_s:
            self._sweep_task = asyncio.create_task(self._sweep_loop(sweep_interval_s))

    def _storage_check(self) -> asyncio.Task[None]:
        if self._storage_task is None or self._storage_task.done():
            self._storage_task = asyncio.create_task(self.ensure_storage())
        return self._storage_task

    async def ensure_storage(self) -> None:
        """Create the bucket and apply the lifecycle rule, once they succeed."""
        if self.lifecycle is not None and not self.lifecycle.detail.startswith("storage down"):
            return
        days = lifecycle_days(self.options.retention_s)
        try:
            await self.store.open()
            self.lifecycle = await self.store.apply_expiration(RECORDINGS_PREFIX, days)
        except StoreError as exc:
            self.lifecycle = LifecycleResult(
                False, False, RECORDINGS_PREFIX, days, f"storage down: {exc}"
            )
            log.error(
                "storage unreachable; will retry", extra=kv(store=self.store.name, error=str(exc))
            )
            return
        log.info(
            "storage ready",
            extra=kv(
                store=self.store.name,
                lifecycle=self.lifecycle.verified,
                detail=self.lifecycle.detail,
            ),
        )

    async def _sweep_loop(self, interval_s: float) -> None:
        while True:
            try:
                await self._storage_check()
                await self.sweeper.sweep()
                if self._resumes:
                    # only finished (failed) ones: a live recording may belong to an SFU
                    # instance process sharing the catalog
                    self.resume_left_behind(states=("failed",))
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(interval_s)

    def _fail_orphans(self) -> None:
        """Recordings a previous process left mid-way with nothing to resume: say so."""
        self._resumes = True
        for state in ("recording", "finalizing"):
            for rec in self.catalog.list(state=state, limit=10_000):
                if rec.id not in self.recorders and not (self.workdir / rec.id / MANIFEST).exists():
                    end = rec.ended_at or self.clock()
                    detail = "the server stopped during this recording; stored segments kept"
                    self.catalog.put(
                        ended(rec, "failed", end, self.options.retention_s, detail=detail)
                    )
                    shutil.rmtree(self.workdir / rec.id, ignore_errors=True)
        # working directories of recordings already finished (a crash between the last
        # upload and the clean-up): nothing in them is needed
        if self.workdir.is_dir():
            for path in self.workdir.iterdir():
                if not path.is_dir():
                    continue
                try:
                    state = self.catalog.get(path.name).state
                except UnknownRecording:
                    continue
                if state in ("available", "expired"):
                    shutil.rmtree(path, ignore_errors=True)

    def resume_left_behind(
        self, states: tuple[str, ...] = ("recording", "finalizing", "failed")
    ) -> int:
        """Finish the upload of every recording whose segments a previous recorder left in
        DATA_DIR/recorder (killed, or storage down past the finalize wait); returns how
        many were started. Runs at start-up (every state: nothing else is recording
        yet) and on each sweep (failed ones)."""
        started = 0
        for state in states:
            for rec in self.catalog.list(state=state, limit=10_000):
                if rec.id in self.recorders or rec.id in self.resuming:
                    continue
                if not (self.workdir / rec.id / MANIFEST).exists():
                    continue
                resumer = Resumer(
                    rec,
                    self.workdir / rec.id,
                    self.store,
                    self.catalog,
                    segment_s=self.options.segment_s,
                    retention_s=self.options.retention_s,
                    clock=self.clock,
                )
                task = asyncio.create_task(resumer.run(), name=f"resume-{rec.id}")
                self.resuming[rec.id] = task
                task.add_done_callback(partial(self._resumed, rec.id))
                started += 1
        return started

    def _resumed(self, rec_id: str, task: asyncio.Task[Recording]) -> None:
        self.resuming.pop(rec_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("resuming %s failed: %r", rec_id, task.exception())

    def fail_unowned(self, room: str | None, detail: str) -> int:
        """Mark failed the recordings (of `room`, or all) still recording or finalizing
        that no recorder of this process owns: their recorder's process died."""
        failed = 0
        for state in ("recording", "finalizing"):
            for rec in self.catalog.list(room=room, state=state, limit=10_000):
                if rec.id in self.recorders:
                    continue
                end = rec.ended_at or self.clock()
                self.catalog.put(ended(rec, "failed", end, self.options.retention_s, detail=detail))
                failed += 1
        return failed

    def start(self, room: str, source: Source, *, rec_id: str | None = None) -> Recorder:
        check_room(room)
        recorder = Recorder(
            room=room,
            source=source,
            store=self.store,
            catalog=self.catalog,
            workdir=self.workdir,
            options=self.options,
            clock=self.clock,
            rec_id=rec_id,
            budget=self.budget,
        ).start()
        self.recorders[recorder.id] = recorder
        recorder.on_done(self._forget)
        return recorder

    def _forget(self, recorder: Recorder) -> None:
        self.recorders.pop(recorder.id, None)

    def get(self, rec_id: str) -> Recording:
        return self.catalog.get(rec_id)

    async def close(self) -> None:
        for recorder in list(self.recorders.values()):
            recorder.stop()
        for recorder in list(self.recorders.values()):
            with contextlib.suppress(Exception):
                await recorder.wait()
        # an unfinished resume goes on at the next start (its files and manifest stay)
        await cancel_and_wait(self._sweep_task, self._storage_task, *self.resuming.values())
        await self.store.close()
        self.catalog.close()
