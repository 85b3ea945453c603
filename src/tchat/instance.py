"""One SFU instance process as `tchat serve` supervises it: `python -m tchat.instance`.

The SFU instance of sfu/cluster/instance.py, with the recording of the rooms it originates as one
more reader of their publishes (recording/live.py): publishes land on origins, so they
are recorded where the media is. This module wires the two; neither imports the other.
"""

from __future__ import annotations

import asyncio
import logging

from tchat.config import Settings
from tchat.recording.live import LiveRecording
from tchat.recording.service import RecordingService
from tchat.sfu.cluster import instance as node
from tchat.sfu.worker import SfuWorker

log = logging.getLogger("tchat.instance")


async def record_publishes(worker: SfuWorker, settings: Settings) -> node.Closer | None:
    if not settings.sfu_record:
        return None
    recording = RecordingService(settings)
    await recording.open(sweep_interval_s=None, fail_orphans=False)
    worker.publish_listeners.append(LiveRecording(worker, recording))

    async def finalize() -> None:
        # what the stopped publishes left recording, within the time the supervisor
        # waits for us (STOP_TIMEOUT_S) before it kills
        try:
            await asyncio.wait_for(recording.close(), node.FINALIZE_BUDGET_S)
        except TimeoutError:
            log.error("recordings did not finalize within %.0f s", node.FINALIZE_BUDGET_S)

    return finalize


if __name__ == "__main__":
    node.main(record_publishes, prog="python -m tchat.instance")
