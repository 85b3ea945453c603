"""An OBS-style WHIP publish: one POST with every candidate in the offer (no trickle),
`Authorization: Bearer`, one H.264 stream (no simulcast) and Opus; DELETE on the
Location ends it. The room shows on /live with its recording while it lasts, and the
recording is available after. aiortc plays the encoder: it gathers before offering,
exactly like OBS's WHIP output.
"""

from __future__ import annotations

from typing import Any

import httpx
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import AudioStreamTrack

from .sfu_helpers import SDP, auth, eventually


async def test_obs_style_whip_publish_bearer_no_trickle(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(RECORDING_SEGMENT_SECONDS="2")
    room = "obs"
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    video = pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    video.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == "H264"]
    )
    await pc.setLocalDescription(await pc.createOffer())  # aiortc: gathering complete
    offer = pc.localDescription.sdp
    assert "a=candidate:" in offer and "a=simulcast" not in offer
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.post(
            f"/whip/{room}", content=offer, headers={**auth(room, "publisher"), "content-type": SDP}
        )
        assert r.status_code == 201, r.text
        assert r.headers["content-type"].startswith(SDP)
        answer = r.text
        # everything the encoder needs is in the answer: no trickle either way
        assert "a=ice-lite" in answer and "a=candidate:" in answer and "H264/90000" in answer
        session = r.headers["location"]
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

        async def live_room() -> dict[str, Any]:
            rooms = (await client.get("/live")).json()["rooms"]
            return next((x for x in rooms if x["room"] == room), {})

        live = await eventually(
            live_room, lambda x: bool(x.get("recording_id")), what="the publish live, recorded"
        )
        # a trickle PATCH is accepted and changes nothing (ICE-lite needs no candidates;
        # issue 17 item 2): the publish goes on
        r = await client.patch(
            session,
            content="a=end-of-candidates\r\n",
            headers={**auth(room, "publisher"), "content-type": "application/trickle-ice-sdpfrag"},
        )
        assert r.status_code == 204

        async def recording() -> dict[str, Any]:
            rec: dict[str, Any] = (await client.get(f"/recordings/{live['recording_id']}")).json()
            return rec

        # record until the live playlist has two 2 s segments (not "for 5 s": a busy box
        # encodes and remuxes late)
        playlist_url = (await recording())["playlist_url"]
        await eventually(
            lambda: client.get(playlist_url),
            lambda r: r.status_code == 200 and r.text.count("#EXTINF") >= 2,
            what="two recorded segments",
        )
        assert (await client.delete(session, headers=auth(room, "publisher"))).status_code == 200
        await pc.close()
        rec = await eventually(
            recording, lambda r: r["state"] in ("available", "failed"), what="the recording ends"
        )
        assert rec["state"] == "available", rec
        assert not any(x["room"] == room for x in (await client.get("/live")).json()["rooms"])
