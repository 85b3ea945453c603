"""Shared steps of the SFU integration tests: tokens, joining a generator viewer,
waiting on a condition, checking a viewer's video across layer switches."""

from __future__ import annotations

import asyncio
import functools
import itertools
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from tchat.auth import issue_token
from tchat.perf.sfu_load import whep_join
from tchat.perf.sfu_media import PreparedMedia
from tchat.perf.webrtc_peer import ClientPeer
from tchat.sfu.rtp import h264_keyframe_start

T = TypeVar("T")
VIEWER_RCVBUF_BYTES = 2 * 1024 * 1024
SECRET = "integration-secret-0123456789abcdef"
SDP = "application/sdp"


@functools.cache
def token(room: str, role: str) -> str:
    """One token per room and role for a test process: like a real client, a test ends
    or caps a session with the token that created it (another one gets 403)."""
    return issue_token(SECRET, room, role)


def media_received(viewer: ClientPeer) -> int:
    """RTP packets a generator viewer received, all its streams."""
    return sum(s.received for s in viewer.stats.streams.values())


def auth(room: str, role: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(room, role)}"}


async def join_viewer(
    client: httpx.AsyncClient, room: str, peer: ClientPeer, layer: str = "low"
) -> str:
    """Open the peer, WHEP it into `room` at `layer`, connect; returns the session URL
    (a refused WHEP raises with its status and body)."""
    await peer.open()
    # a browser's receive buffer, not the kernel's 208 KB default: this test process runs
    # several viewers and the publisher, and on a busy box a stall of it overflowed one
    sock = peer.transport.get_extra_info("socket") if peer.transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, VIEWER_RCVBUF_BYTES)
    return await whep_join(client, room, token(room, "viewer"), peer, layer)


# Deadlines of real-time tests: generous, as the machine may be busy (a condition met
# returns at once; the deadline only bounds how long a real failure takes to report).
WAIT_S = 60.0


async def wait_for(
    cond: Callable[[], bool], timeout_s: float = WAIT_S, what: str = "condition"
) -> None:
    """Poll `cond` until it holds; AssertionError naming `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s:g} s")
        await asyncio.sleep(0.05)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    cond: Callable[[T], bool],
    timeout_s: float = WAIT_S,
    interval_s: float = 0.25,
    what: str = "condition",
) -> T:
    """Await `probe()` until `cond` holds on its result, which is returned; after
    `timeout_s` an AssertionError shows the last result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await probe()
        if cond(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s:g} s; last: {value!r}")
        await asyncio.sleep(interval_s)


async def assert_continuous_layer_switches(
    client: httpx.AsyncClient,
    room: str,
    location: str,
    peer: ClientPeer,
    media: PreparedMedia,
    steps: list[tuple[int, str]],
    per_layer: int,
    timeout_s: float,
) -> None:
    """Cap the viewer (`keep_packets`, decrypting) at each (layer, rid) of `steps` in turn
    and check its video: one SSRC throughout, no sequence gap, the switches in that
    order and each on a keyframe."""
    layer_of = {
        hash(p): rid for rid, frames in media.video.items() for f in frames for p in f.payloads
    }
    assert peer.packets is not None
    packets = peer.packets

    def video() -> list[tuple[int, int, bytes]]:
        return [p for p in packets if hash(p[2]) in layer_of]

    await wait_for(lambda: len(video()) >= 40, timeout_s)
    for target, rid in steps:
        put = await client.put(
            f"{location}/layer", json={"max_layer": target}, headers=auth(room, "viewer")
        )
        assert put.status_code == 200, put.text
        await wait_for(
            lambda rid=rid: sum(layer_of[hash(p)] == rid for *_, p in video()) >= per_layer,
            timeout_s,
        )
    vids = video()
    assert len({ssrc for ssrc, *_ in vids}) == 1  # one SSRC across layers
    seqs = [seq for _, seq, _ in vids]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), "gap"
    rids = [layer_of[hash(p)] for *_, p in vids]
    switches = [i for i in range(1, len(rids)) if rids[i] != rids[i - 1]]
    assert [rids[i] for i in switches] == [rid for _, rid in steps]
    for i in switches:
        assert h264_keyframe_start(vids[i][2]), "a switch must start on a keyframe"
