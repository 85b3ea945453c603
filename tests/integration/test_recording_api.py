"""`tchat serve` as a real process serving a real recording from its data directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tchat.config import load_settings
from tchat.recording.playlist import parse
from tchat.recording.recorder import RecorderOptions
from tchat.recording.service import RecordingService
from tchat.recording.source import UdpMpegTsSource, free_udp_port
from tchat.recording.synthetic import SyntheticStream, wait_udp_listener
from tchat.storage.base import CACHE_FINAL_PLAYLIST, CACHE_IMMUTABLE

FFMPEG = "/usr/bin/ffmpeg"


STORES = {
    "local": {},
    "s3": {"STORAGE": "s3", "S3_BUCKET": "tchat-it"},
}


async def record_one(data_dir: Path, env: dict[str, str]) -> str:
    settings = load_settings(TCHAT_DATA_DIR=str(data_dir), FFMPEG=FFMPEG, **env)
    # no_media_timeout_s: FFmpeg's start took more than the default 10 s on a busy box
    options = RecorderOptions(ffmpeg=FFMPEG, no_media_timeout_s=60.0)
    service = RecordingService(settings, options=options)
    await service.open(sweep_interval_s=None)
    try:
        port = free_udp_port()
        recorder = service.start("api-room", UdpMpegTsSource(port))
        assert await wait_udp_listener(port)
        source = SyntheticStream(FFMPEG, port, 6)
        await source.start()
        await source.wait()
        recorder.stop()
        rec = await recorder.wait()
        assert rec.state == "available", rec.detail
        return rec.id
    finally:
        await service.close()


@pytest.mark.parametrize("kind", list(STORES))
def test_recordings_api_and_cdn_path(  # type: ignore[no-untyped-def]
    server_factory, tmp_path: Path, kind: str, services_answering: dict[str, str]
) -> None:
    env = STORES[kind]
    rec_id = asyncio.run(record_one(tmp_path / "data", env))
    server = server_factory(TCHAT_DATA_DIR=str(tmp_path / "data"), FFMPEG=FFMPEG, **env)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        listing = http.get("/recordings", params={"room": "api-room"}).json()["recordings"]
        assert [r["id"] for r in listing] == [rec_id]
        rec = http.get(f"/recordings/{rec_id}").json()
        assert rec["state"] == "available" and rec["segment_count"] >= 2
        assert rec["expires_at"] - rec["ended_at"] == 30 * 86400
        url = rec["playlist_url"]
        assert url == f"{server.url}/cdn/recordings/{rec_id}/index.m3u8"

        playlist = http.get(url)
        assert playlist.status_code == 200
        assert playlist.headers["content-type"] == "application/vnd.apple.mpegurl"
        assert playlist.headers["cache-control"] == CACHE_FINAL_PLAYLIST
        pl = parse(playlist.text)
        assert pl.endlist and len(pl.segments) == rec["segment_count"]

        seg = http.get(url.rsplit("/", 1)[0] + "/" + pl.segments[0].uri)
        assert seg.status_code == 200 and seg.content[0] == 0x47  # MPEG-TS sync byte
        assert seg.headers["content-type"] == "video/mp2t"
        assert seg.headers["cache-control"] == CACHE_IMMUTABLE

        missing = http.get("/recordings/no-such-id")
        assert missing.status_code == 404
        assert missing.json() == {"error": "not_found", "detail": "no recording 'no-such-id'"}
        assert http.get(f"/cdn/recordings/{rec_id}/seg_99999.ts").status_code == 404
        assert http.get("/cdn/recordings/x/.hidden.meta").status_code == 400
        assert http.get("/cdn/secret").status_code == 404
        bad_state = http.get("/recordings", params={"state": "bogus"})
        assert bad_state.status_code == 400 and bad_state.json()["error"] == "bad_request"
