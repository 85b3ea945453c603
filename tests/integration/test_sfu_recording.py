"""A WHIP publish is recorded: SFU recorder sink → plain RTP → FFmpeg → HLS in storage.

The publisher is the synthetic one (real H.264 simulcast and Opus over real
ICE/DTLS/SRTP); the recording must appear while live, end with ENDLIST after the
publisher leaves, and be ffprobe-playable (H.264 top layer + AAC).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tchat.auth import issue_token
from tchat.perf.sfu_load import MEDIA_CACHE, SyntheticPublisher
from tchat.perf.sfu_media import prepare
from tchat.perf.webrtc_peer import Identity

from .sfu_helpers import SECRET


async def _recording(client: httpx.AsyncClient, room: str, timeout_s: float, **want: Any) -> Any:
    recs: list[Any] = []
    for _ in range(int(timeout_s / 0.25)):
        recs = (await client.get("/recordings", params={"room": room})).json()["recordings"]
        if recs and all(recs[0].get(k) == v for k, v in want.items()):
            return recs[0]
        await asyncio.sleep(0.25)
    raise AssertionError(f"no recording of {room} with {want}: {recs}")


@pytest.mark.parametrize("instances", [1, 2])
async def test_whip_publish_is_recorded_and_playable(server_factory, instances: int) -> None:  # type: ignore[no-untyped-def]
    """With 2 instances the origin's process records (sfu/node.py), not the server's."""
    server = server_factory(RECORDING_SEGMENT_SECONDS="2", NUM_SFU_INSTANCES=str(instances))
    room = "recorded"
    token = issue_token(SECRET, room, "publisher")
    media = prepare(MEDIA_CACHE)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(Identity.create(), media, ["l", "m", "h"])
        await pub.start(client, room, token)
        live = await _recording(client, room, 10, state="recording")
        for _ in range(20):  # /live: the cluster's figure comes with the next heartbeat
            rooms = (await client.get("/live")).json()["rooms"]
            if rooms and rooms[0]["recording_id"] == live["id"]:
                break
            await asyncio.sleep(0.25)
        assert [r["room"] for r in rooms] == [room] and rooms[0]["recording_id"] == live["id"]
        # live: the EVENT playlist is served while the stream goes on
        for _ in range(60):
            r = await client.get(live["playlist_url"])
            if r.status_code == 200 and r.text.count("#EXTINF") >= 2:
                break
            await asyncio.sleep(0.25)
        assert r.status_code == 200 and "#EXT-X-PLAYLIST-TYPE:EVENT" in r.text, r.text
        assert "#EXT-X-ENDLIST" not in r.text
        await asyncio.sleep(2)
        await pub.stop(client, token)
        done = await _recording(client, room, 30, state="available")
        assert done["segment_count"] >= 3 and done["duration_s"] >= 4, done
        playlist = (await client.get(done["playlist_url"])).text
        assert "#EXT-X-ENDLIST" in playlist and "#EXT-X-PROGRAM-DATE-TIME" in playlist
        # FFmpeg's SDP input goes with the recording
        workdir = Path(server.env["TCHAT_DATA_DIR"]) / "recorder"
        assert not list(workdir.glob("*.sdp")), list(workdir.iterdir())

    probe = await asyncio.create_subprocess_exec(
        *("ffprobe", "-v", "error", "-show_streams", "-of", "json", done["playlist_url"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(probe.communicate(), 60)
    assert probe.returncode == 0, err.decode()
    streams = {s["codec_type"]: s for s in json.loads(out)["streams"]}
    assert streams["video"]["codec_name"] == "h264"
    assert streams["audio"]["codec_name"] == "aac"
    # the top simulcast layer, not what a viewer's bandwidth allows
    assert streams["video"]["width"] == 640, streams["video"]  # layer "h" of sfu_media.LAYERS
