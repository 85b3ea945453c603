"""The recorder against real FFmpeg and real stores when things go wrong.

FFmpeg killed mid-stream, S3 unreachable for a while (a real socket that refuses,
in front of the real SeaweedFS server), a buffer that fills, a stream that never
sends media.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tchat.config import load_settings
from tchat.devservices.seaweedfs import ACCESS_KEY, PORT, SECRET_KEY
from tchat.recording.playlist import parse, validate
from tchat.recording.recorder import Recorder, RecorderOptions
from tchat.recording.service import RecordingService
from tchat.recording.source import (
    RtpStream,
    SdpSource,
    UdpMpegTsSource,
    free_rtp_port,
    free_udp_port,
)
from tchat.recording.synthetic import SyntheticStream, wait_udp_listener
from tchat.storage import ObjectStore
from tchat.storage.local import LocalStore
from tchat.storage.s3 import S3Store

FFMPEG = "/usr/bin/ffmpeg"
# no_media_timeout_s: these tests are not about it (one sets its own), and on a busy box
# FFmpeg's start (recorder and synthetic source) took more than the default 10 s
OPTIONS = RecorderOptions(ffmpeg=FFMPEG, retention_s=86400.0, no_media_timeout_s=60.0)


class Gate:
    """A TCP forwarder to the S3 server that can go down: open connections are cut and
    new ones refused, as when the storage host disappears."""

    def __init__(self) -> None:
        self.up = True
        self.port = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def set_up(self, up: bool) -> None:
        self.up = up
        if not up:
            for writer in list(self._open):
                writer.transport.abort()
            self._open.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.refused += 1
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", PORT)
        self._open |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open -= {writer, up_writer}

    async def close(self) -> None:
        self.set_up(False)
        if self._server:
            self._server.close()


class CountingSource(UdpMpegTsSource):
    """Stands in for the SFU's PLI path: counts the recorder's keyframe requests."""

    requests = 0

    def request_keyframe(self) -> None:
        self.requests += 1


async def record(service: RecordingService, seconds: float, *, during: object = None) -> Recorder:
    port = free_udp_port()
    recorder = service.start("robust", CountingSource(port))
    assert await wait_udp_listener(port)
    source = SyntheticStream(FFMPEG, port, seconds)
    await source.start()
    try:
        if during is not None:
            await during(recorder)  # type: ignore[operator]
        await source.wait()
    finally:
        await source.stop()
    recorder.stop()
    await recorder.wait()
    return recorder


@pytest.fixture
async def local_service(tmp_path: Path) -> AsyncIterator[RecordingService]:
    settings = load_settings(TCHAT_DATA_DIR=str(tmp_path / "data"), FFMPEG=FFMPEG)
    service = RecordingService(settings, options=OPTIONS)
    await service.open(sweep_interval_s=None)
    yield service
    await service.close()


async def wait_for(predicate: object, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def playable(path: Path) -> bool:
    proc = subprocess.run(
        ["/usr/bin/ffprobe", "-v", "error", "-show_entries", "format=duration", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode == 0 and not proc.stderr.strip()


async def stored_playlist(store: ObjectStore, key: str) -> str:
    return (await store.get(key)).decode()


async def test_ffmpeg_killed_mid_stream_is_restarted(local_service: RecordingService) -> None:
    async def kill_after_two(recorder: Recorder) -> None:
        await wait_for(lambda: len(recorder.published) >= 2, 60)
        assert recorder.pid is not None
        os.kill(recorder.pid, signal.SIGKILL)

    recorder = await record(local_service, 14, during=kill_after_two)
    rec = recorder.recording
    assert rec.state == "available", rec.detail
    assert recorder.restarts == 1 and "SIGKILL" in rec.detail
    pl = parse(await stored_playlist(local_service.store, rec.playlist_key))
    assert validate(pl, final=True) == []
    assert [s.uri for s in pl.segments] == [f"seg_{i:05d}.ts" for i in range(len(pl.segments))]
    assert sum(s.discontinuity for s in pl.segments) == 1
    assert pl.segments[0].uri == "seg_00000.ts" and len(pl.segments) >= 4
    assert isinstance(local_service.store, LocalStore)
    for seg in pl.segments:
        assert playable(local_service.store.path_of(rec.prefix + seg.uri)), seg.uri
    assert sum(s.duration for s in pl.segments) > 10


async def test_storage_down_then_up_loses_nothing(
    tmp_path: Path, services_answering: dict[str, str]
) -> None:
    gate = Gate()
    await gate.start()
    store = S3Store(
        f"http://127.0.0.1:{gate.port}",
        "tchat-it",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        max_attempts=1,
        connect_timeout_s=0.5,
    )
    settings = load_settings(TCHAT_DATA_DIR=str(tmp_path / "data"), FFMPEG=FFMPEG)
    service = RecordingService(settings, store=store, options=OPTIONS)
    await service.open(sweep_interval_s=None)
    gate.set_up(False)  # storage goes down as the stream starts

    async def outage(recorder: Recorder) -> None:
        await wait_for(lambda: len(recorder.segments) >= 2, 60)
        assert recorder.published == []  # nothing could be stored yet
        gate.set_up(True)

    try:
        recorder = await record(service, 10, during=outage)
        rec = recorder.recording
        assert rec.state == "available", rec.detail
        assert gate.refused > 0
        assert all(s.uploaded_at is not None for s in recorder.segments)
        assert max(s.attempts for s in recorder.segments) > 1  # retried, then stored
        assert rec.segment_count == len(recorder.segments)
        objects = await store.list(rec.prefix)
        assert len(objects) == rec.segment_count + 1
        pl = parse(await stored_playlist(store, rec.playlist_key))
        assert validate(pl, final=True) == [] and len(pl.segments) == rec.segment_count
    finally:
        await service.close()
        await gate.close()


async def test_storage_down_for_good_reports_every_segment(tmp_path: Path) -> None:
    store = S3Store("http://127.0.0.1:9", "tchat-it", max_attempts=1, connect_timeout_s=0.3)
    settings = load_settings(TCHAT_DATA_DIR=str(tmp_path / "data"), FFMPEG=FFMPEG)
    # A tiny disk buffer and a short finalize wait, so both limits are reached.
    opts = replace(OPTIONS, max_buffer_bytes=450_000, finalize_timeout_s=2.0)
    service = RecordingService(settings, store=store, options=opts)
    await service.open(sweep_interval_s=None)  # storage down at start is not fatal
    assert service.lifecycle is not None
    assert service.lifecycle.detail.startswith("storage down")
    recorder = await record(service, 10)
    rec = recorder.recording
    assert rec.state == "failed"
    assert "segments lost" in rec.detail and "upload buffer full" in rec.detail
    assert "not stored after 2s" in rec.detail
    lost = len(recorder.queue.lost)
    waiting = len(recorder.queue.pending_segments())
    assert lost >= 1 and waiting >= 1
    assert lost + waiting == len(recorder.segments)  # every segment accounted for
    # The ones still waiting are kept on disk, not deleted.
    for job in recorder.queue.pending_segments():
        assert job.path is not None and job.path.exists()
    await service.close()


async def test_stream_without_media_fails_with_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(TCHAT_DATA_DIR=str(tmp_path / "data"), FFMPEG=FFMPEG)
    service = RecordingService(settings, options=replace(OPTIONS, no_media_timeout_s=3.0))
    await service.open(sweep_interval_s=None)
    try:
        source = UdpMpegTsSource(free_udp_port())
        with caplog.at_level(logging.INFO, logger="tchat.recording.recorder"):
            recorder = service.start("silent", source)
            rec = await asyncio.wait_for(recorder.wait(), 60)
        assert rec.state == "failed"
        assert rec.detail.startswith("no media received within 3s")
        # the log says what the source and FFmpeg knew (what to look at when it happens)
        said = [r.kv for r in caplog.records if r.getMessage() == "no media"]  # type: ignore[attr-defined]
        assert len(said) == 1 and said[0]["source"] == source.url and said[0]["runs"] >= 1
        assert said[0]["progress"].startswith(("frame=0", "none written", "empty"))
        assert rec.expires_at is not None and rec.segment_count == 0
        assert service.catalog.get(rec.id).state == "failed"
        assert not recorder.workdir.exists()

        stopped = service.start("silent", UdpMpegTsSource(free_udp_port()))
        await asyncio.sleep(0.5)
        stopped.stop()  # the publisher left before sending anything
        rec = await asyncio.wait_for(stopped.wait(), 60)
        assert rec.state == "failed" and rec.segment_count == 0
        assert rec.detail == "the stream ended before any media was recorded"
    finally:
        await service.close()


async def test_concurrent_recordings_do_not_share_files(local_service: RecordingService) -> None:
    a, b = await asyncio.gather(record(local_service, 5), record(local_service, 5))
    assert a.id != b.id and a.workdir != b.workdir
    assert a.recording.state == b.recording.state == "available", (
        a.recording.detail,
        b.recording.detail,
    )
    keys_a = {o.key for o in await local_service.store.list(a.recording.prefix)}
    keys_b = {o.key for o in await local_service.store.list(b.recording.prefix)}
    assert keys_a and keys_b and not keys_a & keys_b
    for recorder in (a, b):
        # One request at the start and one per planned cut (2 s, 4 s for 5 s of media).
        assert isinstance(recorder.source, CountingSource)
        assert recorder.source.requests >= 3


async def test_rtp_sdp_input_records_like_the_sfu_will_feed_it(
    local_service: RecordingService, tmp_path: Path
) -> None:
    port = free_rtp_port()
    asked: list[float] = []
    source = SdpSource(
        tmp_path / "input.sdp",
        [RtpStream("video", port, 96, "H264/90000", "packetization-mode=1")],
        keyframe=lambda: asked.append(1.0),
    )
    recorder = local_service.start("rtp", source)
    assert await wait_udp_listener(port)
    sender = SyntheticStream(FFMPEG, port, 9, rtp=True)
    await sender.start()
    try:
        await sender.wait()
    finally:
        await sender.stop()
    recorder.stop()
    rec = await asyncio.wait_for(recorder.wait(), 60)
    assert rec.state == "available", rec.detail
    pl = parse(await stored_playlist(local_service.store, rec.playlist_key))
    assert validate(pl, final=True) == [] and len(pl.segments) >= 3
    assert sum(s.duration for s in pl.segments) > 7
    assert isinstance(local_service.store, LocalStore)
    for seg in pl.segments:
        assert playable(local_service.store.path_of(rec.prefix + seg.uri)), seg.uri
    assert len(asked) >= 3  # start, then each planned cut: PLIs the SFU would send
