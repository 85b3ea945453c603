"""Issue 14.6 against a real `tchat serve`: media follows only an address that answered
the SFU's own check. A viewer knows its session's ICE credentials, so it can make one
authenticated check with USE-CANDIDATE from any (spoofed) source; the SFU must not turn
the stream, or NACK answers, towards that source. A move that the new address confirms
(a network change) still works."""

from __future__ import annotations

import asyncio
from typing import cast

import httpx
from aioice import stun
from aiortc.rtp import RtcpRtpfbPacket

from tchat.auth import issue_token
from tchat.perf.sfu_load import SyntheticPublisher
from tchat.perf.sfu_media import PreparedMedia
from tchat.perf.webrtc_peer import ClientPeer, Identity

from .sfu_helpers import SECRET, join_viewer, wait_for


class Socket(asyncio.DatagramProtocol):
    """A bare UDP socket that records what reaches it and can answer the SFU's checks
    with the viewer's credentials (what a browser's new network path would do)."""

    def __init__(self, answer_with: str | None = None) -> None:
        self.answer_with = answer_with
        self.got: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append(data)
        if self.answer_with and data[:2] == b"\x00\x01":  # a binding request: answer it
            req = stun.parse_message(data)
            resp = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, req.transaction_id)
            resp.attributes["XOR-MAPPED-ADDRESS"] = addr
            resp.add_message_integrity(self.answer_with.encode())
            assert self.transport is not None
            self.transport.sendto(bytes(resp), addr)

    def media(self) -> int:
        return sum(1 for d in self.got if 128 <= d[0] <= 191)

    def received(self) -> int:
        return sum(len(d) for d in self.got)


def nominating_check(viewer: ClientPeer) -> bytes:
    """One authenticated check with USE-CANDIDATE, made with the viewer's own credentials."""
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{viewer._remote_ufrag}:{viewer.ufrag}"
    msg.attributes["PRIORITY"] = 1853824767
    msg.attributes["ICE-CONTROLLING"] = 1
    msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(viewer._remote_pwd.encode())
    return bytes(msg)


async def test_media_does_not_follow_an_unconfirmed_address(
    server_factory,  # type: ignore[no-untyped-def]
    media: PreparedMedia,
) -> None:
    server = server_factory()
    room = "consent"
    identity = Identity.create()
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l"])
        await pub.start(client, room, issue_token(SECRET, room, "publisher"))
        viewer = ClientPeer(identity, decrypt=True)
        await join_viewer(client, room, viewer, "low")
        await wait_for(lambda: viewer.stats.rtcp_in > 0 and viewer.media_started.is_set(), 30)
        assert viewer.remote is not None
        # a second socket (the "victim" a spoofed source would name) checks in once
        victim = Socket()
        vt, _ = await loop.create_datagram_endpoint(lambda: victim, local_addr=("127.0.0.1", 0))
        check = nominating_check(viewer)
        vt.sendto(check, viewer.remote)
        await wait_for(lambda: len(victim.got) >= 1, 15)  # the SFU answered it
        before = sum(s.received for s in viewer.stats.streams.values())
        await wait_for(
            lambda: sum(s.received for s in viewer.stats.streams.values()) >= before + 200, 30
        )
        # the NACK reflection of the report: a NACK from the viewer's own address
        for ssrc, stream in list(viewer.stats.streams.items()):
            last = stream.max_ext_seq & 0xFFFF
            lost = sorted((last - i) & 0xFFFF for i in range(16))
            viewer.send_rtcp(bytes(RtcpRtpfbPacket(fmt=1, ssrc=0x1234, media_ssrc=ssrc, lost=lost)))
        mark = sum(s.received for s in viewer.stats.streams.values())
        await wait_for(
            lambda: sum(s.received for s in viewer.stats.streams.values()) >= mark + 100, 30
        )
        # the stream stayed with the viewer; the victim got STUN only, no more than it sent
        # (one check) plus the allowance
        assert victim.media() == 0, f"{victim.media()} media datagrams went to the victim"
        assert victim.received() <= len(check) + 256, victim.received()
        assert all(d[0] <= 3 for d in victim.got)

        # a new path that answers the SFU's check (a browser whose network changed) gets
        # the stream: consent, not a blanket refusal. It keeps nominating, as a browser
        # does: the viewer's old path goes on with its consent checks here, and the last
        # nomination before the new path's answer to the SFU's check is what counts.
        moved = Socket(answer_with=viewer.pwd)
        mt, _ = await loop.create_datagram_endpoint(lambda: moved, local_addr=("127.0.0.1", 0))

        async def keep_nominating() -> None:
            while True:
                mt.sendto(nominating_check(viewer), viewer.remote)
                await asyncio.sleep(0.5)

        nominating = asyncio.create_task(keep_nominating())
        try:
            await wait_for(lambda: moved.media() >= 50, 30, "media on the confirmed new path")
        finally:
            nominating.cancel()
        vt.close()
        mt.close()
        viewer.close()
        await pub.stop(client, issue_token(SECRET, room, "publisher"))
