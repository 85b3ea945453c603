"""Recordings left behind (issue 14 item 13), against real FFmpeg, the real S3 server
(SeaweedFS, behind a gate that can refuse connections) and a real `tchat serve`.

- Storage still down when the finalize wait ends: the recording is `failed` with its
  segments kept on disk; the next process resumes the upload from the recording's
  manifest and the recording becomes `available`, every segment stored and playable.
- `tchat serve` killed (SIGKILL) mid-broadcast while storage is down: the restarted
  server finds the recording in the catalog, uploads what was left and makes it
  available, its final playlist VOD + ENDLIST.
- The global disk budget: two recordings, storage down, a budget smaller than what
  they buffer: segments beyond it are lost and each recording says why.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from tchat.auth import issue_token
from tchat.config import load_settings
from tchat.devservices.seaweedfs import ACCESS_KEY, SECRET_KEY
from tchat.perf.sfu_load import MEDIA_CACHE, SyntheticPublisher
from tchat.perf.sfu_media import prepare
from tchat.perf.webrtc_peer import Identity
from tchat.recording.catalog import Recording
from tchat.recording.playlist import parse, validate
from tchat.recording.resume import MANIFEST
from tchat.recording.service import RecordingService
from tchat.storage.s3 import S3Store

from .sfu_helpers import SECRET
from .test_recording_robustness import FFMPEG, OPTIONS, Gate, playable, record, wait_for

BUCKET = "tchat-it"


def gated_store(gate: Gate) -> S3Store:
    return S3Store(
        f"http://127.0.0.1:{gate.port}", BUCKET, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
        max_attempts=1, connect_timeout_s=0.5,
    )  # fmt: skip


async def check_stored(store: S3Store, rec: Any, tmp_path: Path) -> None:
    """The stored playlist is the finished VOD and every segment it lists plays."""
    pl = parse((await store.get(rec.playlist_key)).decode())
    assert pl.playlist_type == "VOD" and pl.endlist and validate(pl, final=True) == []
    assert len(pl.segments) == rec.segment_count > 0
    for seg in pl.segments:
        path = tmp_path / seg.uri
        path.write_bytes(await store.get(rec.prefix + seg.uri))
        assert playable(path), seg.uri


async def test_storage_down_past_the_finalize_wait_is_resumed_by_the_next_process(
    tmp_path: Path, services_answering: dict[str, str]
) -> None:
    gate = Gate()
    await gate.start()
    gate.set_up(False)
    settings = load_settings(TCHAT_DATA_DIR=str(tmp_path / "data"), FFMPEG=FFMPEG)
    opts = replace(OPTIONS, finalize_timeout_s=2.0)
    first = RecordingService(settings, store=gated_store(gate), options=opts)
    await first.open(sweep_interval_s=None)
    try:
        recorder = await record(first, 7)
        rec = recorder.recording
        assert rec.state == "failed" and "not stored after 2s" in rec.detail, rec.detail
        waiting = recorder.queue.pending_segments()
        assert len(waiting) == len(recorder.segments) >= 3
        assert (recorder.workdir / MANIFEST).exists()
    finally:
        await first.close()

    gate.set_up(True)  # storage is back; a new process starts
    second = RecordingService(settings, store=gated_store(gate), options=opts)
    await second.open(sweep_interval_s=None)
    try:
        await wait_for(lambda: second.catalog.get(rec.id).state == "available", 60)
        done = second.catalog.get(rec.id)
        assert done.segment_count == len(recorder.segments)
        assert "upload resumed later" in done.detail, done.detail
        assert not recorder.workdir.exists()  # nothing left behind
        await check_stored(second.store, done, tmp_path)  # type: ignore[arg-type]
    finally:
        await second.close()
        await gate.close()


async def test_server_killed_mid_broadcast_is_resumed_on_restart(
    server_factory, tmp_path: Path, services_answering: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    gate = Gate()
    await gate.start()
    gate.set_up(False)
    env = dict(
        STORAGE="s3", S3_ENDPOINT=f"http://127.0.0.1:{gate.port}", S3_BUCKET=BUCKET,
        S3_ACCESS_KEY=ACCESS_KEY, S3_SECRET_KEY=SECRET_KEY, RECORDING_SEGMENT_SECONDS="2",
    )  # fmt: skip
    server = server_factory(**env)
    room = "killed"
    token = issue_token(SECRET, room, "publisher")
    pub = SyntheticPublisher(Identity.create(), prepare(MEDIA_CACHE), ["l", "m", "h"])
    workdir = tmp_path / "data" / "recorder"
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            await pub.start(client, room, token)
            recs: list[Any] = []

            def segments_waiting() -> int:
                # complete segments (the manifest's), not the file FFmpeg is still writing
                return sum(len(m.read_text().splitlines()) for m in workdir.glob(f"*/{MANIFEST}"))

            await wait_for(lambda: segments_waiting() >= 3, 60)
            recs = (await client.get("/recordings", params={"room": room})).json()["recordings"]
            assert recs and recs[0]["state"] == "recording"
            rec_id = recs[0]["id"]
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGKILL)  # no clean shutdown at all
            server.proc.wait()
            pub.peer.close()
        kept = len((workdir / rec_id / MANIFEST).read_text().splitlines())
        assert kept >= 3

        gate.set_up(True)
        restarted = server_factory(**env)
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as client:
            rec: Any = None
            for _ in range(600):
                rec = (await client.get(f"/recordings/{rec_id}")).json()
                if rec["state"] in ("available", "failed"):
                    break
                await asyncio.sleep(0.1)
            assert rec["state"] == "available", rec
            assert rec["segment_count"] >= kept, (rec, kept)
            assert "the server stopped during this recording" in rec["detail"]
            playlist = (await client.get(rec["playlist_url"])).text
        pl = parse(playlist)
        assert pl.playlist_type == "VOD" and pl.endlist and validate(pl, final=True) == []
        assert not (workdir / rec_id).exists()
    finally:
        await gate.close()


async def test_global_disk_budget_refuses_segments_with_a_clear_reason(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        TCHAT_DATA_DIR=str(tmp_path / "data"), FFMPEG=FFMPEG,
        RECORDING_DISK_BUDGET_BYTES=str(1_000_000),
    )  # fmt: skip
    store = S3Store("http://127.0.0.1:9", BUCKET, max_attempts=1, connect_timeout_s=0.3)
    # each recording alone stays under its own cap; together they pass the budget
    opts = replace(OPTIONS, finalize_timeout_s=1.0, max_buffer_bytes=50_000_000)
    service = RecordingService(settings, store=store, options=opts)
    await service.open(sweep_interval_s=None)
    try:
        a, b = await asyncio.gather(record(service, 9), record(service, 9))
        lost = a.queue.lost + b.queue.lost
        assert lost, "nothing refused: the budget was not reached"
        assert all("RECORDING_DISK_BUDGET_BYTES=1000000" in seg.reason for seg in lost)
        for recorder in (a, b):
            rec = recorder.recording
            assert rec.state == "failed"
            if recorder.queue.lost:
                assert "disk budget exceeded" in rec.detail, rec.detail
        # what was kept stays within the budget (one segment's worth of slack at most)
        biggest = max(s.size_bytes for s in a.segments + b.segments)
        assert service.budget.used() <= 1_000_000 + biggest
    finally:
        await service.close()


async def test_the_sweep_resumes_only_finished_recordings(tmp_path: Path) -> None:
    """A recording still `recording` may be an SFU instance process's live one: the
    periodic sweep leaves it; only the start-up pass (nothing records yet) resumes it."""
    settings = load_settings(TCHAT_DATA_DIR=str(tmp_path / "data"), FFMPEG=FFMPEG)
    service = RecordingService(settings, options=OPTIONS)
    await service.open(sweep_interval_s=None)
    try:
        rec = service.catalog.put(Recording("live0000000000ab", "r", "recording", 1.0))
        run = service.workdir / rec.id / "run-0"
        run.mkdir(parents=True)
        (run / "seg_00000.ts").write_bytes(b"\x47" + bytes(187))
        entry = {"n": 0, "key": rec.prefix + "seg_00000.ts", "file": "run-0/seg_00000.ts",
                 "duration": 1.0, "pdt": None, "disc": False, "size": 188}  # fmt: skip
        (service.workdir / rec.id / MANIFEST).write_text(json.dumps(entry) + "\n")
        assert service.resume_left_behind(states=("failed",)) == 0
        assert service.catalog.get(rec.id).state == "recording"
        assert service.resume_left_behind() == 1
        await wait_for(lambda: service.catalog.get(rec.id).state == "available", 30)
        assert await service.store.get(rec.prefix + "seg_00000.ts") == b"\x47" + bytes(187)
    finally:
        await service.close()
