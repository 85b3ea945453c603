"""The asyncio shell around UploadQueue: one worker per recording, uploads in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from tchat.logs import kv
from tchat.metrics import SEGMENT_UPLOAD_SECONDS, UPLOAD_FAILURES
from tchat.recording.uploadqueue import UploadJob, UploadQueue
from tchat.storage import ObjectStore, StoreError, cache_control_for

log = logging.getLogger("tchat.recording.uploader")


class Uploader:
    def __init__(
        self,
        store: ObjectStore,
        queue: UploadQueue,
        on_uploaded: Callable[[UploadJob, float], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.queue = queue
        self.on_uploaded = on_uploaded
        self.clock = clock
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, job: UploadJob) -> bool:
        accepted = self.queue.add(job)
        if accepted:
            self._idle.clear()
            self._wake.set()
        return accepted

    async def _upload(self, job: UploadJob) -> None:
        if job.kind == "segment":
            assert job.path is not None
            await self.store.put_file(job.key, job.path)
        else:
            assert job.data is not None
            await self.store.put_bytes(
                job.key, job.data, cache_control=cache_control_for(job.key, job.data)
            )

    async def run(self) -> None:
        while True:
            now = self.clock()
            job = self.queue.take(now)
            if job is None:
                if self.queue.empty:
                    self._idle.set()
                timer = self.queue.next_timer()
                timeout = None if timer is None else max(0.0, timer - now)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            try:
                await self._upload(job)
            except (StoreError, OSError) as exc:
                UPLOAD_FAILURES.inc()
                delay = self.queue.failed(job, self.clock(), str(exc))
                log.warning(
                    "upload failed; will retry",
                    extra=kv(key=job.key, attempt=job.attempts, retry_in_s=delay, error=str(exc)),
                )
                continue
            uploaded_at = self.clock()
            self.queue.done(job)
            if job.kind == "segment":
                SEGMENT_UPLOAD_SECONDS.observe(max(0.0, uploaded_at - job.closed_at))
                if job.path is not None:
                    job.path.unlink(missing_ok=True)  # the disk buffer only holds what waits
            self.on_uploaded(job, uploaded_at)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything queued is stored; False if timeout_s passed first."""
        try:
            await asyncio.wait_for(self._wait_empty(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _wait_empty(self) -> None:
        while not self.queue.empty:
            self._idle.clear()
            await self._idle.wait()
