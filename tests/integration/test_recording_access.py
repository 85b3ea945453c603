"""Issue 14.7 against a real `tchat serve`: with RECORDING_ACCESS=private, recordings and
their HLS (live or finished) need the same grant as WHEP. The catalog answers a viewer
token for the room only; /cdn serves only signed paths, which FFmpeg's HLS demuxer and
Chromium's hls.js page play (relative segment URIs stay under the signature); with
STORAGE=s3 and RECORDING_S3_PRESIGN the segments come from presigned S3 URLs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tchat.auth import issue_token
from tchat.recording.playlist import parse

from .sfu_helpers import SECRET
from .test_recording_api import FFMPEG, record_one
from .test_sfu_browser import chromium

FFPROBE = "/usr/bin/ffprobe"


def ffprobe_duration(url: str) -> float:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-show_entries", "format=duration", "-of", "json", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-800:]
    return float(json.loads(out.stdout)["format"]["duration"])


def bearer(room: str, role: str = "viewer", ttl_s: float = 600) -> dict[str, str]:
    return {"authorization": f"Bearer {issue_token(SECRET, room, role, ttl_s=ttl_s)}"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One finished recording of room api-room (local storage): (data dir, id)."""
    data = tmp_path_factory.mktemp("private") / "data"
    return data, asyncio.run(record_one(data, {}))


def test_private_recordings_need_the_rooms_viewer_grant(  # type: ignore[no-untyped-def]
    server_factory, recorded: tuple[Path, str]
) -> None:
    data, rec_id = recorded
    server = server_factory(TCHAT_DATA_DIR=str(data), FFMPEG=FFMPEG, RECORDING_ACCESS="private")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        # before: anyone listed every id and fetched every playlist
        assert http.get("/recordings").status_code == 401
        assert http.get(f"/recordings/{rec_id}").status_code == 401
        plain = http.get(f"/cdn/recordings/{rec_id}/index.m3u8")
        assert plain.status_code == 403 and plain.json()["error"] == "forbidden"
        assert http.get(f"/cdn/recordings/{rec_id}/seg_00000.ts").status_code == 403
        assert http.get("/live").json()["rooms"] == []
        # a token for another room opens nothing of this one
        other = bearer("other")
        assert http.get(f"/recordings/{rec_id}", headers=other).status_code == 403
        assert (
            http.get("/recordings", params={"room": "api-room"}, headers=other).status_code == 403
        )
        assert http.get("/recordings", headers=other).json()["recordings"] == []
        assert http.get("/recordings", headers={"authorization": "Bearer junk"}).status_code == 403
        # the room's viewer (or chat, or publisher) token does
        listing = http.get("/recordings", headers=bearer("api-room")).json()["recordings"]
        assert [r["id"] for r in listing] == [rec_id]
        rec = http.get(f"/recordings/{rec_id}", headers=bearer("api-room", "chat", 120)).json()
        url = rec["playlist_url"]
        assert url.startswith(f"{server.url}/cdn/s/") and url.endswith(f"/{rec_id}/index.m3u8")
        expires = int(url.split("/cdn/s/")[1].split(".")[0])
        assert expires <= time.time() + 121  # never past the (120 s) token it was made for
        playlist = http.get(url)
        assert playlist.status_code == 200
        pl = parse(playlist.text)
        assert pl.endlist and not pl.segments[0].uri.startswith("http")  # relative URIs
        seg = http.get(url.rsplit("/", 1)[0] + "/" + pl.segments[0].uri)
        assert seg.status_code == 200 and seg.content[0] == 0x47
        # a real HLS client resolves the segments under the signed path
        assert ffprobe_duration(url) > 2.0
        # altered, moved to another recording, or expired: refused
        grant = url.split("/cdn/s/")[1].split("/")[0]
        exp, sig = grant.split(".")
        bad = url.replace(grant, f"{exp}.{'0' * 32}")
        assert http.get(bad).status_code == 403
        later = url.replace(grant, f"{int(exp) + 3600}.{sig}")
        assert http.get(later).status_code == 403
        elsewhere = f"{server.url}/cdn/s/{grant}/recordings/another/index.m3u8"
        assert http.get(elsewhere).status_code == 403
        past = http.get(f"/recordings/{rec_id}", headers=bearer("api-room", ttl_s=-5))
        assert past.status_code == 403  # an expired token gets no URL at all


async def test_private_replay_page_plays_with_a_token_link(  # type: ignore[no-untyped-def]
    server_factory, recorded: tuple[Path, str], tmp_path: Path
) -> None:
    """The replay page in private mode: without a token it says so; with the link's
    #token= it plays the signed HLS in Chromium (hls.js)."""
    data, rec_id = recorded
    server = server_factory(TCHAT_DATA_DIR=str(data), FFMPEG=FFMPEG, RECORDING_ACCESS="private")
    token = issue_token(SECRET, "api-room", "viewer", ttl_s=600)
    page_url = f"{server.url}/recordings/{rec_id}#token={quote(token)}"
    async with chromium(page_url, tmp_path / "chromium") as page:
        state: dict[str, object] = {}
        for _ in range(600):
            state = await page.eval(
                "(() => { const v = document.querySelector('video'), r = window.tchatReplay;"
                " if (v && v.paused && v.readyState >= 2) v.play().catch(() => {});"
                " return {error: r && r.error, t: v ? v.currentTime : 0}; })()"
            )
            assert not state.get("error"), state
            if float(state["t"] or 0) > 1.0:  # type: ignore[arg-type]
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the private recording did not play: {state}")
    async with chromium(f"{server.url}/recordings/{rec_id}", tmp_path / "chromium2") as page:
        for _ in range(300):
            error = await page.eval("window.tchatReplay && window.tchatReplay.error")
            if error:
                break
            await asyncio.sleep(0.1)
        assert error and "private" in error


def test_private_s3_segments_from_presigned_urls(  # type: ignore[no-untyped-def]
    server_factory, tmp_path: Path, services_answering: dict[str, str]
) -> None:
    env = {"STORAGE": "s3", "S3_BUCKET": "tchat-it"}
    rec_id = asyncio.run(record_one(tmp_path / "data", env))
    server = server_factory(
        TCHAT_DATA_DIR=str(tmp_path / "data"),
        FFMPEG=FFMPEG,
        RECORDING_ACCESS="private",
        RECORDING_S3_PRESIGN="true",
        **env,
    )
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get(f"/cdn/recordings/{rec_id}/index.m3u8").status_code == 403
        url = http.get(f"/recordings/{rec_id}", headers=bearer("api-room")).json()["playlist_url"]
        pl = parse(http.get(url).text)
        first = pl.segments[0].uri
        assert (
            first.startswith("http://127.0.0.1:8333/tchat-it/recordings/") and "Signature" in first
        )
        seg = httpx.get(first, timeout=10)
        assert seg.status_code == 200 and seg.content[0] == 0x47
        assert ffprobe_duration(url) > 2.0
