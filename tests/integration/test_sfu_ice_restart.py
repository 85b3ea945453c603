"""ICE restart over WHEP PATCH (RFC 9725 §4.3) against a real `tchat serve`, in one
process and on a cluster edge: a viewer watching a synthetic publisher restarts ICE and
moves to a new local address (a new socket, as a phone that changed networks) mid-stream;
its session, DTLS association and SRTP keys go on, and media arrives at the new address
after a short gap (measured)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tchat.perf.results import TestResult, record_test
from tchat.perf.sfu_load import SyntheticPublisher
from tchat.perf.sfu_media import PreparedMedia
from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu.sdpfrag import MEDIA_TYPE, parse_fragment

from .sfu_helpers import auth, join_viewer, media_received, token, wait_for


@pytest.mark.parametrize("instances", [1, 2], ids=["one-process", "cluster"])
async def test_ice_restart_moves_a_viewer_to_a_new_address(
    server_factory,  # type: ignore[no-untyped-def]
    media: PreparedMedia,
    instances: int,
) -> None:
    server = server_factory(NUM_SFU_INSTANCES=str(instances))
    room = f"restart{instances}"
    identity = Identity.create()
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l"])
        await pub.start(client, room, token(room, "publisher"))
        viewer = ClientPeer(identity, decrypt=True)
        url = await join_viewer(client, room, viewer, "low")
        await wait_for(lambda: media_received(viewer) >= 30, what="media before the restart")
        assert viewer.transport is not None
        old_addr = viewer.transport.get_extra_info("sockname")

        headers = {**auth(room, "viewer"), "content-type": MEDIA_TYPE, "if-match": "*"}
        r = await client.patch(url, content=viewer.restart_fragment(), headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == MEDIA_TYPE and r.headers["etag"]
        ours = parse_fragment(r.text)
        assert ours.ufrag and ours.pwd and ours.candidates

        before, t0 = media_received(viewer), loop.time()
        await viewer.move(r.text)
        assert viewer.transport.get_extra_info("sockname") != old_addr
        await wait_for(lambda: media_received(viewer) > before, what="media at the new address")
        gap_s = loop.time() - t0
        await wait_for(lambda: media_received(viewer) >= before + 60, what="media keeps flowing")
        kind = "one_process" if instances == 1 else "cluster"
        result = TestResult(f"ice_restart_{kind}")
        result.metrics = {"ice_restart_gap_ms": round(gap_s * 1000, 1)}
        result.notes = [
            "A decrypting generator viewer restarts ICE (WHEP PATCH) and moves to a new "
            "socket mid-stream: gap = the move (its first check from the new address) → "
            "the first packet there. One run; loopback."
        ]
        result.evaluate()
        record_test("network", result)
        assert viewer.stats.decrypt_errors == 0  # the same SRTP keys
        for s in viewer.stats.streams.values():
            assert s.bad_payloads == 0 and s.reordered == 0

        # the session is the same one: its URL still ends it
        assert (await client.delete(url, headers=auth(room, "viewer"))).status_code == 200
        viewer.close()
        await pub.stop(client, token(room, "publisher"))
