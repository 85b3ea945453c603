"""The load generator's native receive path (tchat_fastpath.Swarm: epoll + recvmmsg)
against the Python one (`ClientPeer.datagram_received`): the same datagrams sent to two
viewers' real loopback sockets, one read by the event loop throughout and one handed to
the native reader midway, must give the same figures (packets, octets, first and
extended highest sequence number per SSRC, RTCP count). Then a real swarm against a
real server on each path: every bulk viewer counted, nothing lost."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tchat.auth import issue_token
from tchat.perf.sfu_load import MEDIA_CACHE, SyntheticPublisher, receive_path
from tchat.perf.sfu_media import prepare
from tchat.perf.webrtc_peer import ClientPeer, Identity, rtp_header
from tests.native import require_native

from .sfu_helpers import SECRET, eventually


def _datagrams(rng: random.Random) -> list[bytes]:
    """RTP of two SSRCs (one wrapping its numbers, with gaps, repeats and late
    packets), RTCP (an 8-byte RR among them), STUN, DTLS-like and short junk."""
    out: list[bytes] = []
    seqs = {0x1111: 65000, 0x2222: 10}
    for i in range(1500):
        ssrc = 0x1111 if i % 3 else 0x2222
        seq = seqs[ssrc]
        roll = rng.random()
        if roll < 0.03:
            seq = (seq - rng.randint(1, 40)) & 0xFFFF  # late or repeated
        elif roll < 0.06:
            seqs[ssrc] = seq = (seq + rng.randint(2, 30)) & 0xFFFF  # a gap
        else:
            seqs[ssrc] = (seq + 1) & 0xFFFF
        out.append(
            rtp_header(102, seq, i * 3000, ssrc, i % 5 == 0) + os.urandom(rng.randint(0, 1100))
        )
        if i % 97 == 0:
            out.append(struct.pack("!BBHI", 0x80, 201, 1, 0x3333))  # an empty RR: 8 bytes
            out.append(bytes([0x81, 200]) + os.urandom(50))  # an SR-like one
        if i % 151 == 0:
            out += [b"\x00\x01" + os.urandom(30), bytes([22]) + os.urandom(40), b"\x80", b""]
            out.append(bytes([0x80, 0x66]) + os.urandom(5))  # RTP-like, too short to count
    return out


def _figures(peer: ClientPeer) -> dict[int, tuple[int, int, int, int]]:
    return {
        ssrc: (s.first_seq, s.max_ext_seq, s.received, s.octets)
        for ssrc, s in peer.stats.streams.items()
    }


def _counted(d: bytes) -> bool:
    """Whether a viewer counts the datagram: RTCP, or RTP of a whole header."""
    if len(d) < 2 or not 128 <= d[0] <= 191:
        return False
    return 192 <= d[1] <= 223 or len(d) >= 12


async def test_native_receive_counts_as_the_python_viewer_does() -> None:
    require_native()
    swarm, path = receive_path("native")
    assert swarm is not None and path.startswith("native")
    py, nat = ClientPeer(Identity.create()), ClientPeer(Identity.create())
    await py.open()
    await nat.open(own_socket=True)
    assert py.transport is not None and nat.transport is not None
    dests = [py.transport.get_extra_info("sockname"), nat.transport.get_extra_info("sockname")]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagrams = _datagrams(random.Random(7))
    want = sum(1 for d in datagrams if _counted(d))
    half = len(datagrams) // 3

    def counter(peer: ClientPeer) -> Callable[[], Awaitable[int]]:
        async def total() -> int:
            peer.sync()
            return sum(s.received for s in peer.stats.streams.values()) + peer.stats.rtcp_in

        return total

    try:
        for i, d in enumerate(datagrams):
            if i == half:  # what Python counted so far goes on natively
                await eventually(counter(nat), lambda n: n > 0, what="the first packets")
                nat.hand_off(swarm)
            for dest in dests:
                sender.sendto(d, dest)
            if i % 20 == 0:
                await asyncio.sleep(0.005)  # loopback buffers are finite: let both read
        for peer in (py, nat):
            await eventually(counter(peer), lambda n: n == want, what="every datagram counted")
        nat.sync(final=True)
        assert nat.swarm is None
        assert _figures(nat) == _figures(py)
        assert nat.stats.rtcp_in == py.stats.rtcp_in > 0
        got, calls, errors = swarm.counters()
        assert got >= len(datagrams) - half and calls > 0 and errors == 0
        assert _figures(py)[0x1111][1] > 65535  # its numbers wrapped
    finally:
        sender.close()
        py.close()
        nat.close()
        swarm.close()


def _swarm(url: str, room: str, token: str, receive: str, count: int) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "tchat.perf.sfu_load", "viewers", "--url", url, "--room", room,
        "--token", token, "--count", str(count), "--hold", "3", "--sample-every", "4",
        "--receive", receive,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("receive", ["native", "python"])
async def test_swarm_on_each_receive_path(server_factory: Any, receive: str) -> None:
    if receive == "native":
        require_native()
    # the swarm joins with one token, from one address, many at a time (as the load suite)
    server = server_factory(
        SFU_MAX_CONNECTING_PER_IDENTITY="1000", SFU_MAX_CONNECTING_PER_ADDRESS="1000"
    )
    room = f"swarm-{receive}"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(Identity.create(), prepare(MEDIA_CACHE), ["l", "m", "h"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        try:
            token = issue_token(SECRET, room, "viewer")
            result = await asyncio.to_thread(_swarm, server.url, room, token, receive, 12)
        finally:
            await pub.stop(client)
    assert result["viewers_connected"] == 12, result["errors"]
    assert result["receive"]["path"].startswith(receive)
    assert result["viewer_packets_received"] > 12 * 50
    assert result["viewer_packets_per_s_avg"] > 20  # ~84 packets/s of the mid layer + audio
    assert result["sampled_bad_payloads"] == 0 and result["sampled_decrypt_errors"] == 0
    if receive == "native":
        rx = result["receive"]
        assert rx["read_errors"] == 0 and rx["recvmmsg_calls"] > 0
        # the 9 bulk viewers' packets after their hand-off came through the native reader
        assert rx["datagrams"] > 9 * 50
