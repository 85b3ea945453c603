"""Retransmissions and numbering against a real `tchat serve`: RTX (RFC 4588) for viewers
that offer it, a NACK flood bounded by the viewer's delivered rate (issue 14.1), and a
Chromium publisher's padding that leaves no hole for a Chromium viewer (issue 12)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from aiortc.rtp import RtcpRtpfbPacket
from aiortc.sdp import SessionDescription

from tchat.auth import issue_token
from tchat.perf.browser_viewer import BrowserViewer, launch_chromium
from tchat.perf.nack_flood import measure_nack_flood
from tchat.perf.sfu_load import SyntheticPublisher
from tchat.perf.sfu_media import PreparedMedia
from tchat.perf.webrtc_peer import RTX_PT, ClientPeer, Identity

from .sfu_helpers import SECRET, join_viewer, wait_for


async def test_rtx_viewer_gets_nack_answers_and_probe_padding_on_the_rtx_stream(
    server_factory,  # type: ignore[no-untyped-def]
    media: PreparedMedia,
) -> None:
    server = server_factory(SFU_RECORD="false")
    room = "rtx"
    identity = Identity.create()
    video_payloads = {p for frames in media.video.values() for f in frames for p in f.payloads}
    lost: list[int] = []
    seen: list[int] = []

    def lose_one_video_packet(data: bytes) -> bool:
        if not lost and (data[1] & 0x7F) == 102 and len(seen) >= 100:
            lost.append(int.from_bytes(data[2:4], "big"))
            return True
        seen.append(1)
        return False

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        peer = ClientPeer(
            identity, decrypt=True, keep_packets=True, adaptive=True, rtx=True,
            lose=lose_one_video_packet,
        )  # fmt: skip
        await join_viewer(client, room, peer, layer="high")
        packets = peer.packets
        assert packets is not None
        await wait_for(lambda: bool(lost) and len(packets) >= 150, timeout_s=60)
        # the answer names our RTX stream: FID group of the video SSRC and its RTX SSRC
        answer = SessionDescription.parse(peer.answer)
        video = next(m for m in answer.media if m.kind == "video")
        (group,) = video.ssrc_group
        media_ssrc, rtx_ssrc = (int(s) for s in group.items)
        assert group.semantic == "FID" and RTX_PT in video.fmt
        # a NACK is answered as RTX: our RTX SSRC, its own numbering, OSN + the payload
        peer.send_rtcp(bytes(RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=media_ssrc, lost=lost)))

        def answered() -> list[bytes]:
            return [p for s, _, p in packets if s == rtx_ssrc and p]

        await wait_for(lambda: bool(answered()), timeout_s=30)
        body = answered()[0]
        assert int.from_bytes(body[:2], "big") == lost[0] and body[2:] in video_payloads
        # the viewer's probes pad on the RTX stream: the media numbering has no hole but
        # the packet the "network" lost (padding never takes a media number)
        await wait_for(lambda: peer.stats.streams[rtx_ssrc].received > len(answered()), 60)
        stream = peer.stats.streams[media_ssrc]
        assert stream.lost() == 1 and stream.gaps == 1
        stats = (await client.get(f"{server.admin_url}/sfu/stats?viewers=true")).json()
        (row,) = stats["viewers"]
        assert row["rtx"] and row["padding_bytes"] > 0 and row["nacks"]["answered"] == 1
        peer.close()
        await pub.stop(client, issue_token(SECRET, room, "publisher"))


async def test_nack_flood_is_bounded_by_the_viewers_delivered_rate(
    server_factory,  # type: ignore[no-untyped-def]
    media: PreparedMedia,
) -> None:
    """Issue 14.1: 30 datagrams/s of 48 NACKs each (every number still cached) got
    x1,155 the NACK bytes back. Now the retransmitted bytes stay <= 1.5 x the rate
    delivered to the viewer (its 1 s budget is 1x), and NACKs are still answered."""
    server = server_factory(SFU_RECORD="false")
    room = "flood"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(Identity.create(), media, ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        await asyncio.sleep(1.0)
        result = await measure_nack_flood(
            server.url, room, issue_token(SECRET, room, "viewer"), flood_s=5.0
        )
        await pub.stop(client, issue_token(SECRET, room, "publisher"))
    print(f"nack flood: {result.as_dict()}")
    assert result.measured_by == "sfu" and result.delivered_bps > 0
    assert result.nacks["answered"] > 0  # a flood does not stop honest answers
    assert result.nacks["over_budget"] > 0  # … but the budget held it
    assert result.retransmitted_bps <= 1.5 * result.delivered_bps, result.as_dict()


async def test_publisher_padding_leaves_no_hole_for_a_chromium_viewer(
    server_factory,  # type: ignore[no-untyped-def]
    media: PreparedMedia,
) -> None:
    """Issue 12: Chrome publishers pad their simulcast layers (~300 padding-only packets a
    second measured); the SFU dropped them but kept their numbers, so a Chrome viewer saw
    each as a loss it NACKed in vain (packetsLost 6,592 and 8 freezes in 40 s). The
    publisher here pads every layer after every frame, as Chrome does: the Chromium
    viewer loses nothing."""
    server = server_factory(SFU_RECORD="false")
    room = "publisher-padding"
    async with (
        launch_chromium() as browser,
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        pub = SyntheticPublisher(Identity.create(), media, ["l", "m", "h"], padding_per_frame=3)
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        viewer = BrowserViewer(browser, server.url)
        await viewer.watch(room, issue_token(SECRET, room, "viewer"))
        closed = 0  # the publisher's padding closed up on the layer this viewer receives
        sample: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while loop.time() < deadline:
            sample = await viewer.sample()
            stats = (await client.get(f"{server.admin_url}/sfu/stats?viewers=true")).json()
            closed = sum(int(v["publisher_padding_closed_up"]) for v in stats["viewers"])
            if closed >= 300 and int(sample.get("frames_decoded", 0)) >= 60:
                break
            await asyncio.sleep(1.0)
        await pub.stop(client, issue_token(SECRET, room, "publisher"))
    print(f"padding closed up {closed}, viewer {sample}")
    assert closed >= 300 and int(sample.get("frames_decoded", 0)) >= 60, sample
    # before the fix every padding packet was a lost number at the viewer
    assert int(sample["lost"]) < 30, sample
