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

from .sfu_helpers import SECRET, WAIT_S, eventually


async def _recording(client: httpx.AsyncClient, room: str, **want: Any) -> Any:
    async def recordings() -> list[Any]:
        recs: list[Any] = (await client.get("/recordings", params={"room": room})).json()[
            "recordings"
        ]
        return recs

    recs = await eventually(
        recordings,
        lambda recs: bool(recs) and all(recs[0].get(k) == v for k, v in want.items()),
        what=f"a recording of {room} with {want}",
    )
    return recs[0]


@pytest.mark.parametrize("instances", [1, 2])
async def test_whip_publish_is_recorded_and_playable(server_factory, instances: int) -> None:  # type: ignore[no-untyped-def]
    """With 2 instances the origin's process records (sfu/cluster/instance.py), not the server's."""
    server = server_factory(RECORDING_SEGMENT_SECONDS="2", NUM_SFU_INSTANCES=str(instances))
    room = "recorded"
    token = issue_token(SECRET, room, "publisher")
    media = prepare(MEDIA_CACHE)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(Identity.create(), media, ["l", "m", "h"])
        await pub.start(client, room, token)
        live = await _recording(client, room, state="recording")

        async def live_rooms() -> list[Any]:
            rooms: list[Any] = (await client.get("/live")).json()["rooms"]
            return rooms

        # /live: the cluster's figure comes with the next heartbeat
        rooms = await eventually(
            live_rooms,
            lambda rooms: bool(rooms) and rooms[0]["recording_id"] == live["id"],
            what="the room on /live with its recording",
        )
        assert [r["room"] for r in rooms] == [room]

        # live: the EVENT playlist is served while the stream goes on; stop once it has
        # three 2 s segments (the recording's length, not the clock, decides)
        async def live_playlist() -> tuple[int, str, Any]:
            r = await client.get(live["playlist_url"])
            rec = (await client.get(f"/recordings/{live['id']}")).json()  # for a failure
            return r.status_code, r.text, {k: rec.get(k) for k in ("state", "detail")}

        _, text, _ = await eventually(
            live_playlist,
            lambda got: got[0] == 200 and got[1].count("#EXTINF") >= 3,
            what="the live playlist with 3 segments",
        )
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text, text
        assert "#EXT-X-ENDLIST" not in text
        await pub.stop(client, token)
        done = await _recording(client, room, state="available")
        # the first segment is short (RECORDING_FIRST_SEGMENT_SECONDS) and a layer switch
        # cuts one: the final recording holds at least what the live playlist showed
        live_s = sum(float(line[8:].split(",")[0]) for line in text.splitlines()
                     if line.startswith("#EXTINF:"))  # fmt: skip
        assert done["segment_count"] >= 3 and done["duration_s"] >= live_s - 0.05, (done, text)
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
    out, err = await asyncio.wait_for(probe.communicate(), WAIT_S)
    assert probe.returncode == 0, err.decode()
    streams = {s["codec_type"]: s for s in json.loads(out)["streams"]}
    assert streams["video"]["codec_name"] == "h264"
    assert streams["audio"]["codec_name"] == "aac"
    # the top simulcast layer, not what a viewer's bandwidth allows
    assert streams["video"]["width"] == 640, streams["video"]  # layer "h" of sfu_media.LAYERS
