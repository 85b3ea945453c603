"""Media through a real `tchat serve` SFU: aiortc and our generator peers on loopback UDP.

Everything on the wire is real: ICE (aioice / our controlling checks against the
SFU's ICE-lite), DTLS handshakes, SRTP both ways. Waits are bounded by generous
deadlines; no timing is asserted here (that is tests/performance).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from tchat.auth import issue_token
from tchat.perf.sfu_load import SyntheticPublisher
from tchat.perf.sfu_media import PreparedMedia
from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu.rtp import h264_keyframe_start
from tests.native import require_native

from .sfu_helpers import (
    SDP,
    SECRET,
    WAIT_S,
    assert_continuous_layer_switches,
    auth,
    eventually,
    join_viewer,
    wait_for,
)


async def _aiortc_publish(client: httpx.AsyncClient, room: str, codec: str) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    prefs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == codec]
    video.setCodecPreferences(prefs)
    await pc.setLocalDescription(await pc.createOffer())
    resp = await client.post(
        f"/whip/{room}",
        content=pc.localDescription.sdp,
        headers={**auth(room, "publisher"), "content-type": SDP},
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["content-type"].startswith(SDP)
    assert resp.headers["location"].startswith(f"/whip/{room}/")
    await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
    return pc


@pytest.mark.parametrize("fanout", ["native", "python"])
@pytest.mark.parametrize("codec", ["H264", "VP8"])
async def test_aiortc_publisher_to_aiortc_viewers_decodes_frames(
    server_factory, codec: str, fanout: str
) -> None:  # type: ignore[no-untyped-def]
    if fanout == "native":
        require_native()
    server = server_factory(SFU_FASTPATH=fanout)
    room = f"aiortc-{codec.lower()}"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = await _aiortc_publish(client, room, codec)
        frames: dict[str, int] = {}
        viewers = []
        tasks = []

        async def drain(track: MediaStreamTrack, key: str) -> None:
            try:
                while True:
                    await track.recv()
                    frames[key] = frames.get(key, 0) + 1
            except MediaStreamError:
                pass

        for i in range(2):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")

            @pc.on("track")
            def on_track(track: MediaStreamTrack, i: int = i) -> None:
                tasks.append(asyncio.ensure_future(drain(track, f"{i}-{track.kind}")))

            await pc.setLocalDescription(await pc.createOffer())
            resp = await client.post(
                f"/whep/{room}",
                content=pc.localDescription.sdp,
                headers={**auth(room, "viewer"), "content-type": SDP},
            )
            assert resp.status_code == 201, resp.text
            assert f"{codec}/90000" in resp.text
            await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
            viewers.append((pc, resp.headers["location"]))
        want = ["0-video", "0-audio", "1-video", "1-audio"]
        # decoded frames: the viewers' decoders accepted what the SFU forwarded
        await wait_for(lambda: all(frames.get(k, 0) >= 20 for k in want), what="decoded frames")
        stats = (await client.get("/sfu/stats")).json()
        assert stats["viewers_connected"] == 2 and stats["delivered_packets"] > 0
        assert stats["fanout"]["path"] == fanout, stats["fanout"]
        if fanout == "native":  # sent by sendmmsg, none refused
            assert stats["fanout"]["datagrams"] > 0 and stats["fanout"]["send_errors"] == 0

        # the SFU's receiver reports reach the publisher (it derives RTT from them)
        async def remote_inbound() -> set[str]:
            report = await pub.getStats()
            return {s.kind for s in report.values() if s.type == "remote-inbound-rtp"}

        await eventually(remote_inbound, lambda k: k == {"audio", "video"}, what="receiver reports")
        for pc, location in viewers:
            assert (await client.delete(location, headers=auth(room, "viewer"))).status_code == 200
            await pc.close()
        assert (await client.delete(viewers[0][1], headers=auth(room, "viewer"))).status_code == 404
        await pub.close()
        for t in tasks:
            t.cancel()


async def test_synthetic_simulcast_sampled_viewers_verify_media(
    server_factory,
    media: PreparedMedia,  # type: ignore[no-untyped-def]
) -> None:
    server = server_factory()
    room = "synthetic"
    identity = Identity.create()
    known = media.known_payloads()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        viewers = []
        for layer in ("low", "mid", "high"):
            peer = ClientPeer(
                identity, decrypt=True, known_payloads=known, keyframe_test=h264_keyframe_start
            )
            await join_viewer(client, room, peer, layer)
            viewers.append(peer)
        await wait_for(
            lambda: all(sum(s.payloads for s in v.stats.streams.values()) >= 150 for v in viewers)
        )
        for v in viewers:
            assert len(v.stats.streams) == 2  # one audio, one video SSRC
            for s in v.stats.streams.values():
                assert s.bad_payloads == 0 and s.gaps == 0 and s.reordered == 0
            assert v.stats.decrypt_errors == 0
            video = [s for s in v.stats.streams.values() if s.keyframe_first is not None]
            assert [s.keyframe_first for s in video] == [True]
        # each viewer got its own layer: octets per packet grow with the layer
        sizes = []
        for v in viewers:
            s = next(s for s in v.stats.streams.values() if s.keyframe_first is not None)
            sizes.append(s.octets / s.received)
        assert sizes[0] < sizes[1] < sizes[2]
        for v in viewers:
            v.close()
        await pub.stop(client, issue_token(SECRET, room, "publisher"))


async def test_layer_switch_keeps_sequence_continuous_and_starts_on_keyframe(
    server_factory,
    media: PreparedMedia,  # type: ignore[no-untyped-def]
) -> None:
    server = server_factory()
    room = "switch"
    identity = Identity.create()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        peer = ClientPeer(identity, decrypt=True, keep_packets=True)
        location = await join_viewer(client, room, peer)
        steps = [(2, "h"), (1, "m")]
        await assert_continuous_layer_switches(
            client, room, location, peer, media, steps, 40, WAIT_S
        )
        assert pub.restarts["h"] >= 1 and pub.restarts["m"] >= 1  # PLIs reached the publisher
        peer.close()
        await pub.stop(client, issue_token(SECRET, room, "publisher"))


async def test_whip_whep_auth_and_session_errors(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    identity = Identity.create()
    peer = ClientPeer(identity)
    offer = peer.offer()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        ctype = {"content-type": SDP}
        r = await client.post("/whep/r", content=offer, headers=ctype)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = await client.post(
            "/whep/r", content=offer, headers={**ctype, **auth("other", "viewer")}
        )
        assert r.status_code == 403 and "does not allow" in r.json()["detail"]
        r = await client.post("/whip/r", content=offer, headers={**ctype, **auth("r", "viewer")})
        assert r.status_code == 403
        r = await client.post("/whep/r", content=offer, headers={**ctype, **auth("r", "viewer")})
        assert r.status_code == 404 and "no publisher" in r.json()["detail"]
        r = await client.post(
            "/whep/r", content=offer, headers={"content-type": "text/plain", **auth("r", "viewer")}
        )
        assert r.status_code == 415
        pub_offer = ClientPeer(identity).offer(rids=["h", "m", "l"], publish=True)
        r = await client.post(
            "/whip/r", content=pub_offer, headers={**ctype, **auth("r", "publisher")}
        )
        assert r.status_code == 201
        r2 = await client.post(
            "/whip/r", content=pub_offer, headers={**ctype, **auth("r", "publisher")}
        )
        assert r2.status_code == 409
        r3 = await client.delete("/whip/r/nope", headers=auth("r", "publisher"))
        assert r3.status_code == 404
        r4 = await client.delete(r.headers["location"], headers=auth("r", "publisher"))
        assert r4.status_code == 200


async def test_viewer_feedback_nack_pli_and_sender_reports(
    server_factory,  # type: ignore[no-untyped-def]
    media: PreparedMedia,
) -> None:
    from aiortc.rtp import RtcpPsfbPacket, RtcpRtpfbPacket

    server = server_factory(SFU_SR_INTERVAL="0.5")
    room = "feedback"
    identity = Identity.create()
    layer_of = {hash(p) for f in media.video["l"] for p in f.payloads}
    lost: list[tuple[int, int]] = []

    def lose_one_video_packet(data: bytes) -> bool:
        # after 100 packets, the "network" loses one video packet (PT 102)
        if not lost and (data[1] & 0x7F) == 102 and len(seen) >= 100:
            lost.append((int.from_bytes(data[8:12], "big"), int.from_bytes(data[2:4], "big")))
            return True
        seen.append(1)
        return False

    seen: list[int] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        peer = ClientPeer(identity, decrypt=True, keep_packets=True, lose=lose_one_video_packet)
        await join_viewer(client, room, peer)
        packets = peer.packets
        assert packets is not None
        await wait_for(lambda: bool(lost) and len(packets) >= 120)
        ssrc, seq = lost[0]
        assert not any(p[:2] == (ssrc, seq) for p in packets)
        # NACK: the SFU answers from its cache; the viewer decrypts the missing packet
        peer.send_rtcp(bytes(RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=ssrc, lost=[seq])))
        await wait_for(lambda: any(p[:2] == (ssrc, seq) for p in packets))
        again = next(p for p in packets if p[:2] == (ssrc, seq))
        assert hash(again[2]) in layer_of and peer.stats.decrypt_errors == 0
        # PLI from the viewer reaches the publisher as a PLI on the low layer's SSRC
        restarts = pub.restarts["l"]
        await asyncio.sleep(0.6)  # past the SFU's per-layer PLI interval
        peer.send_rtcp(bytes(RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=ssrc)))
        await wait_for(lambda: pub.restarts["l"] > restarts)
        # sender reports arrive (the viewer counts SRTCP datagrams it gets)
        await wait_for(lambda: peer.stats.rtcp_in >= 2)
        peer.close()
        await pub.stop(client, issue_token(SECRET, room, "publisher"))
