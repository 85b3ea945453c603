"""RecordingService: the store, the catalog, the live recorders and the sweeper of one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from tchat.aio import cancel_and_wait
from tchat.config import Settings
from tchat.logs import kv
from tchat.recording.catalog import Catalog, Recording, ended
from tchat.recording.recorder import Recorder, RecorderOptions
from tchat.recording.retention import Sweeper, lifecycle_days
from tchat.recording.source import Source
from tchat.rooms import check_room
from tchat.storage import LifecycleResult, ObjectStore, StoreError, open_store

log = logging.getLogger("tchat.recording")

RECORDINGS_PREFIX = "recordings/"
SWEEP_INTERVAL_S = 600.0


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
        self.sweeper = Sweeper(self.catalog, self.store, clock)
        self.recorders: dict[str, Recorder] = {}
        self.lifecycle: LifecycleResult | None = None
        self._sweep_task: asyncio.Task[None] | None = None

    async def open(
        self, *, sweep_interval_s: float | None = SWEEP_INTERVAL_S, fail_orphans: bool = True
    ) -> None:
        """Ready the store; storage being down is logged, not fatal (uploads queue).
        `fail_orphans=False` for an SFU instance process, which shares the catalog with
        the server and its sibling instances: their live recordings are not orphans."""
        await self.ensure_storage()
        if fail_orphans:
            self._fail_orphans()
        if sweep_interval_s:
            self._sweep_task = asyncio.create_task(self._sweep_loop(sweep_interval_s))

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
                await self.ensure_storage()
                await self.sweeper.sweep()
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(interval_s)

    def _fail_orphans(self) -> None:
        """Recordings a previous process left mid-way: say so, keep what was stored."""
        self.fail_unowned(None, "the server stopped during this recording; stored segments kept")

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
        await cancel_and_wait(self._sweep_task)
        await self.store.close()
        self.catalog.close()


def with_retention(options: RecorderOptions, retention_s: float) -> RecorderOptions:
    return replace(options, retention_s=retention_s)
