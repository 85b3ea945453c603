"""The load generator's native receive path (tchat_fastpath.Swarm: epoll + recvmmsg,
SRTP by tchat_fastpath's `Receiver`) against the Python one (`ClientPeer` with
pylibsrtp): the same datagrams sent to viewers' real loopback sockets — one of each
pair read by the event loop throughout, the other handed to the native reader midway —
must give the same figures, a sampled (decrypting) viewer's checks included; the native
SRTP receiver must accept exactly what libsrtp accepts, with the same plaintext. Then a
real swarm against a real server on each path: every viewer counted, nothing lost."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pylibsrtp
import pytest
from aiortc.rtcdtlstransport import SRTPProtectionProfile

from tchat.auth import issue_token
from tchat.perf.sfu_load import MEDIA_CACHE, SyntheticPublisher, receive_path
from tchat.perf.sfu_media import prepare
from tchat.perf.webrtc_peer import ClientPeer, Identity, rtp_header
from tchat.sfu import fastpath
from tchat.sfu.dtls import PROFILES, srtp_session
from tchat.sfu.rtp import h264_keyframe_start
from tests.native import require_native

from .sfu_helpers import SECRET, eventually

VIDEO, AUDIO, OTHER = 0x1111, 0x2222, 0x3333
IDR = b"\x65\x88" + bytes(40)  # an IDR slice: a keyframe start
KNOWN = [IDR] + [bytes([0x41, i]) + bytes(range(i % 200)) for i in range(60)]  # "sent"


HAND_OFF = 500  # the packet before which the native viewers take over


def _packets(rng: random.Random) -> list[bytes]:
    """RTP packets in send order: video from a keyframe on, wrapping its numbers, with
    gaps, late and repeated sends, padding-only packets and a payload the publisher
    never sent; audio; an SSRC that starts on a non-keyframe. No late send in the 100
    after HAND_OFF: the native reader's replay window starts there (docs/sfu.md)."""
    out: list[bytes] = []
    seqs = {VIDEO: 65300, AUDIO: 10, OTHER: 40000}
    for i in range(1500):
        ssrc = (VIDEO, VIDEO, AUDIO, OTHER)[i % 4]
        seq = seqs[ssrc]
        roll = rng.random()
        calm = HAND_OFF <= i < HAND_OFF + 100
        if i > 40 and roll < 0.03 and not calm:
            seq = (seq - rng.randint(1, 40)) & 0xFFFF  # late, or sent again
        elif roll < 0.06:
            seqs[ssrc] = seq = (seq + rng.randint(2, 30)) & 0xFFFF  # a gap
        else:
            seqs[ssrc] = (seq + 1) & 0xFFFF
        pt = 111 if ssrc == AUDIO else 102
        header = rtp_header(pt, seq, i * 3000, ssrc, i % 5 == 0)
        if ssrc == VIDEO and i > 8 and roll > 0.97:  # padding only: P bit, 200 bytes
            out.append(bytes([header[0] | 0x20]) + header[1:] + bytes(199) + b"\xc8")
            continue
        payload = IDR if i < 4 and ssrc == VIDEO else rng.choice(KNOWN[1:])
        if roll > 0.995:
            payload = b"\x41never-sent"
        out.append(header + payload)
    return out


def _datagrams(
    profile: SRTPProtectionProfile, key: bytes, rng: random.Random
) -> tuple[list[bytes], int]:
    """What the viewers get: SRTP of `_packets`, some sent twice (a replay), some
    tampered with, between RTCP (an 8-byte RR among them), STUN, DTLS-like and junk;
    and the index of the datagram of packet HAND_OFF."""
    tx = srtp_session(key, profile, False)
    out: list[bytes] = []
    hand_off = 0
    for i, packet in enumerate(_packets(rng)):
        if i == HAND_OFF:
            hand_off = len(out)
        data = tx.protect(packet)
        out.append(data)
        if i % 83 == 0:
            out.append(data)  # the same datagram again: libsrtp refuses the replay
        if i % 131 == 0:
            out.append(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])  # fails authentication
        if i % 97 == 0:
            out.append(struct.pack("!BBHI", 0x80, 201, 1, 0x4444))  # an empty RR: 8 bytes
            out.append(bytes([0x81, 200]) + rng.randbytes(50))  # an SR-like one
        if i % 151 == 0:
            out += [b"\x00\x01" + rng.randbytes(30), bytes([22]) + rng.randbytes(40), b"\x80"]
            out.append(bytes([0x80, 0x66]) + rng.randbytes(5))  # RTP-like, too short
    return out, hand_off


def _counted(d: bytes) -> bool:
    """Whether a viewer counts the datagram: RTCP, or RTP of a whole header."""
    if len(d) < 2 or not 128 <= d[0] <= 191:
        return False
    return 192 <= d[1] <= 223 or len(d) >= 12


def _figures(peer: ClientPeer) -> dict[str, Any]:
    st = peer.stats
    streams = {ssrc: vars(s) for ssrc, s in st.streams.items()}
    return {"streams": streams, "rtcp": st.rtcp_in, "errors": st.decrypt_errors,
            "padding": st.padding}  # fmt: skip


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: str(p.libsrtp_profile))
def test_native_unprotect_accepts_what_libsrtp_accepts(profile: SRTPProtectionProfile) -> None:
    require_native()
    module = fastpath.choose("native").module
    rng = random.Random(11)
    key = rng.randbytes(profile.key_length + profile.salt_length)
    ref = srtp_session(key, profile, True)
    ours = module.SrtpReceiver(key, profile.libsrtp_profile)
    datagrams = [d for d in _datagrams(profile, key, rng)[0] if len(d) >= 12 and d[1] < 192]
    datagrams.append(datagrams[0][:13])  # shorter than its tag
    datagrams.append(b"\x90" + datagrams[5][1:12] + b"\xbe\xde\x00\x09")  # extension past the end
    outcomes = {"ok": 0, "refused": 0}
    for i, d in enumerate(datagrams):
        try:
            want: bytes | None = ref.unprotect(d)
        except pylibsrtp.Error:
            want = None
        try:
            got: bytes | None = ours.unprotect(d)
        except pylibsrtp.Error:
            got = None
        assert got == want, f"datagram {i}: native {got!r:.40} libsrtp {want!r:.40}"
        outcomes["ok" if want is not None else "refused"] += 1
    assert outcomes["ok"] > 1000 and outcomes["refused"] > 20  # replays, tampering, late
    with pytest.raises(pylibsrtp.Error):
        module.SrtpReceiver(b"short", profile.libsrtp_profile)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: str(p.libsrtp_profile))
async def test_native_receive_counts_as_the_python_viewer_does(
    profile: SRTPProtectionProfile,
) -> None:
    """Pairs of viewers, bulk and sampled, get the same datagrams: one of each reads them
    in Python, the other hands its socket to the native reader at packet HAND_OFF."""
    require_native()
    swarm, path = receive_path("native")
    assert swarm is not None and path.startswith("native")
    swarm.know(KNOWN)
    rng = random.Random(7)
    key = rng.randbytes(profile.key_length + profile.salt_length)
    known = {hash(p) for p in KNOWN}
    peers: list[ClientPeer] = []
    for sampled in (False, True):
        for own in (False, True):
            peer = ClientPeer(
                Identity.create(), decrypt=sampled, known_payloads=known if sampled else None,
                keyframe_test=h264_keyframe_start,
            )  # fmt: skip
            if sampled:
                peer.rx, peer.rx_key = srtp_session(key, profile, True), key
                peer.rx_profile = profile.libsrtp_profile
            await peer.open(own_socket=own)
            peers.append(peer)
    py_bulk, nat_bulk, py_sampled, nat_sampled = peers
    dests = [p.transport.get_extra_info("sockname") for p in peers if p.transport]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagrams, hand_off = _datagrams(profile, key, rng)
    want = sum(1 for d in datagrams if _counted(d))

    def counter(peer: ClientPeer) -> Callable[[], Awaitable[int]]:
        async def total() -> int:
            peer.sync()
            return sum(s.received for s in peer.stats.streams.values()) + peer.stats.rtcp_in

        return total

    try:
        for i, d in enumerate(datagrams):
            if i == hand_off:  # what Python counted so far goes on natively
                for peer in (nat_bulk, nat_sampled):
                    await eventually(counter(peer), lambda n: n > 0, what="the first packets")
                    peer.hand_off(swarm)
            for dest in dests:
                sender.sendto(d, dest)
            if i % 20 == 0:
                await asyncio.sleep(0.005)  # loopback buffers are finite: let all read
        for peer in peers:
            await eventually(counter(peer), lambda n: n == want, what="every datagram counted")
        for peer in (nat_bulk, nat_sampled):
            peer.sync(final=True)
            assert peer.swarm is None
        assert _figures(nat_bulk) == _figures(py_bulk)
        assert _figures(nat_sampled) == _figures(py_sampled)
        # the streams did what the test meant them to
        video = py_sampled.stats.streams[VIDEO]
        assert video.max_ext_seq > 65535 and video.gaps > 0 and video.reordered > 0
        assert (
            video.keyframe_first is True and py_sampled.stats.streams[OTHER].keyframe_first is False
        )
        assert py_sampled.stats.streams[AUDIO].keyframe_first is None
        streams = py_sampled.stats.streams.values()
        assert sum(s.bad_payloads for s in streams) > 0 and py_sampled.stats.padding > 0
        assert py_sampled.stats.decrypt_errors > 20 and py_bulk.stats.rtcp_in > 0
        got, calls, errors = swarm.counters()
        assert got >= 2 * (len(datagrams) - hand_off) and calls > 0 and errors == 0
    finally:
        sender.close()
        for peer in peers:
            peer.close()
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
    # 3 sampled viewers decrypted and checked every payload (natively after the hand-off)
    assert result["sampled_viewers"] == 3 and result["sampled_payloads_checked"] > 3 * 50
    assert result["sampled_bad_payloads"] == 0 and result["sampled_decrypt_errors"] == 0
    assert result["sampled_seq_gaps"] == 0 and result["viewer_loss_pct"] == 0
    assert result["sampled_video_not_starting_on_keyframe"] == 0
    if receive == "native":
        rx = result["receive"]
        assert rx["read_errors"] == 0 and rx["recvmmsg_calls"] > 0
        assert rx["datagrams"] > 12 * 50  # after each hand-off, through the native reader
