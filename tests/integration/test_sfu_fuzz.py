"""Garbage at a running SFU: malformed SDP gets 400 with a reason; junk UDP is dropped
and counted while a publisher and a sampled viewer keep streaming through it."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import httpx
import pytest
from aioice import stun

from tchat.auth import issue_token
from tchat.perf.sfu_load import MEDIA_CACHE, SyntheticPublisher
from tchat.perf.sfu_media import prepare
from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu.rtp import h264_keyframe_start
from tchat.sfu.sdp import MAX_SDP_BYTES

from .sfu_helpers import SDP, SECRET, auth, eventually, join_viewer, wait_for


def _offers() -> list[tuple[str, bytes]]:
    good = ClientPeer(Identity.create()).offer(rids=["h", "m", "l"], publish=True)
    rng = random.Random(5)
    lines = good.split("\r\n")
    out = [
        ("empty", b""),
        ("not sdp", b"hello world"),
        ("binary", bytes(rng.randrange(256) for _ in range(300))),
        ("oversized", good.encode() + b"a=x" * MAX_SDP_BYTES),
        ("no media", b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"),
        ("bad m line", good.replace("m=video 9 UDP/TLS/RTP/SAVPF 102", "m=video x").encode()),
        ("bad rtpmap", good.replace("a=rtpmap:102", "a=rtpmap:zz").encode()),
        ("no ice", good.replace("a=ice-pwd:", "a=x-pwd:").encode()),
        (
            "4 rids",
            good.replace("send h;m;l", "send h;m;l;x")
            .replace("a=rid:h", "a=rid:x send\r\na=rid:h")
            .encode(),
        ),
    ]
    for i in range(6):  # truncated and shuffled variants of a valid offer
        cut = rng.randrange(10, len(good) // 2)
        out.append((f"truncated {i}", good[:cut].encode()))
        shuffled = lines[:]
        rng.shuffle(shuffled)
        out.append((f"shuffled {i}", "\r\n".join(shuffled).encode()))
    return out


async def test_malformed_sdp_gets_400_with_reason(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for name, body in _offers():
            for path, role in (("/whip/fuzz", "publisher"), ("/whep/fuzz", "viewer")):
                r = await client.post(
                    path, content=body, headers={**auth("fuzz", role), "content-type": SDP}
                )
                if name == "oversized":  # refused past the cap, without reading the rest
                    assert r.status_code == 413, (path, r.status_code, r.text)
                    assert r.json()["error"] == "payload_too_large"
                    continue
                if path == "/whep/fuzz" and r.status_code == 404:
                    continue  # no publisher in the room: refused before parsing
                assert r.status_code == 400, (name, path, r.status_code, r.text)
                assert r.json()["error"] == "bad_sdp" and r.json()["detail"], name
        assert (await client.get("/healthz")).status_code == 200


def _garbage(rng: random.Random, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1400))))
        elif kind == 1:  # a STUN binding request with wrong credentials
            msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            msg.attributes["USERNAME"] = f"{rng.randrange(1 << 32):08x}:x"
            msg.attributes["ICE-CONTROLLING"] = 1
            msg.add_message_integrity(b"wrong-password-wrong-password")
            out.append(bytes(msg))
        elif kind == 2:  # truncated STUN header
            out.append(b"\x00\x01\x00\x08" + bytes(rng.randrange(256) for _ in range(10)))
        elif kind == 3:  # a DTLS ClientHello-ish record from an unknown address
            out.append(b"\x16\xfe\xfd" + bytes(rng.randrange(256) for _ in range(120)))
        elif kind == 4:  # RTP-looking packet
            out.append(struct.pack("!BBHII", 0x80, 102, i, i, 1234) + bytes(200))
        else:  # RTCP-looking packet
            out.append(b"\x80\xc8\x00\x06" + bytes(rng.randrange(256) for _ in range(24)))
    return out


async def test_garbage_udp_is_dropped_and_viewers_keep_receiving(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    room = "fuzz-udp"
    media = prepare(MEDIA_CACHE)
    identity = Identity.create()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        viewer = ClientPeer(
            identity,
            decrypt=True,
            known_payloads=media.known_payloads(),
            keyframe_test=h264_keyframe_start,
        )
        await join_viewer(client, room, viewer)
        port = (await client.get("/sfu/stats")).json()["udp_port"]
        rng = random.Random(68)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        before = sum(s.payloads for s in viewer.stats.streams.values())
        try:
            for burst in range(10):
                for data in _garbage(rng, 60):
                    stranger.sendto(data, ("127.0.0.1", port))
                # junk from the addresses the SFU knows: bad SRTP/SRTCP and bad DTLS
                for peer in (pub.peer, viewer):
                    assert peer.transport is not None and peer.remote is not None
                    for data in (
                        struct.pack("!BBHII", 0x80, 102, burst, 0, 1) + bytes(100),
                        b"\x80\xc9\x00\x07" + bytes(rng.randrange(256) for _ in range(40)),
                        b"\x17\xfe\xfd" + bytes(30),
                        bytes([rng.randrange(64, 128)]) + bytes(20),
                    ):
                        peer.transport.sendto(data, peer.remote)
                await asyncio.sleep(0.1)
        finally:
            stranger.close()
        reasons = (
            "stun_unknown_ufrag",
            "dtls_unknown_peer",
            "rtp_unknown_peer",
            "srtp_unprotect",
            "srtcp_unprotect",
            "unknown_first_byte",
        )

        async def drops() -> dict[str, int]:
            got: dict[str, int] = (await client.get("/sfu/stats")).json()["drops"]
            return got

        # the SFU counts the junk as it reads it (late on a busy box): wait for the counts
        await eventually(
            drops,
            lambda d: sum(d.values()) >= 600 and all(d.get(r, 0) > 0 for r in reasons),
            what="junk dropped and counted by reason",
        )
        # the sessions survived and media kept flowing, intact and in order
        assert (await client.get("/sfu/stats")).json()["viewers_connected"] == 1
        await wait_for(
            lambda: sum(s.payloads for s in viewer.stats.streams.values()) > before + 50,
            what="media flowing after the junk",
        )
        for s in viewer.stats.streams.values():
            assert s.bad_payloads == 0 and s.gaps == 0
        assert viewer.stats.decrypt_errors == 0
        viewer.close()
        await pub.stop(client, issue_token(SECRET, room, "publisher"))


@pytest.mark.parametrize("layer", ["bogus"])
async def test_bad_layer_query_is_400(server_factory, layer: str) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.post(
            "/whep/r",
            params={"layer": layer},
            content=b"v=0",
            headers={**auth("r", "viewer"), "content-type": SDP},
        )
        assert r.status_code == 400 and "layer" in r.json()["detail"]
