"""`SfuCore` end to end with a fake clock and no socket, no sleep, no event loop.

A simulcast publisher and two viewers, each a real DTLS client (our DtlsEndpoint in the
client role) behind an in-memory wire: their ICE checks and the SFU's own, the DTLS
handshake, SRTP both ways, RTP in and out of the layer each viewer asked for, a viewer's
PLI reaching the publisher, a layer switch at the next keyframe, and a consent timeout
that ends every session with a DTLS close_notify."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tchat.perf.sfu_bench import handshake
from tchat.perf.webrtc_peer import ClientPeer, Identity, rtp_header
from tchat.sfu import rtcp
from tchat.sfu.core import TICK_S, SfuCore
from tchat.sfu.dtls import DtlsEndpoint, DtlsState
from tchat.sfu.peer import Peer
from tchat.sfu.settings import SfuSettings
from tests.native import require_native
from tests.unit.fakes import Clock

Addr = tuple[str, int]
PUB, V1, V2 = ("10.0.0.1", 5000), ("10.0.0.2", 5000), ("10.0.0.3", 5000)
SSRC = {"l": 11, "m": 22, "h": 33}
IDR = bytes([0x65, 0x88, 0x84])  # an H.264 IDR NAL unit
CONSENT_S = 30.0


class Wire:
    """What the core sends, by destination (its `send` callback)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Addr]] = []

    def __call__(self, data: bytes, addr: Addr) -> None:
        self.sent.append((data, addr))

    def take(self, addr: Addr) -> list[bytes]:
        out = [d for d, a in self.sent if a == addr]
        self.sent = [(d, a) for d, a in self.sent if a != addr]
        return out


@dataclass
class Client:
    peer: Peer
    addr: Addr
    dtls: DtlsEndpoint

    def _video(self, wire: Wire) -> list[bytes]:
        """The video RTP the SFU sent this client, decrypted (header without extensions:
        these viewers negotiated none)."""
        assert self.dtls.srtp is not None
        out = []
        for d in wire.take(self.addr):
            if 128 <= d[0] <= 191 and not 192 <= d[1] <= 223:
                plain = self.dtls.srtp.rx.unprotect(d)
                if plain[1] & 0x7F == 102:
                    out.append(plain)
        return out

    def rtp_payloads(self, wire: Wire) -> list[bytes]:
        return [p[12:] for p in self._video(wire)]

    def video_rtp(self, wire: Wire) -> list[tuple[int, int]]:
        """(sequence number, timestamp) of each."""
        return [
            (int.from_bytes(p[2:4], "big"), int.from_bytes(p[4:8], "big"))
            for p in self._video(wire)
        ]

    def rtcp_in(self, wire: Wire) -> list[object]:
        assert self.dtls.srtp is not None
        packets: list[object] = []
        for d in wire.take(self.addr):
            if 128 <= d[0] <= 191 and 192 <= d[1] <= 223:
                packets += rtcp.parse(self.dtls.srtp.rx.unprotect_rtcp(d))
        return packets


@pytest.fixture(scope="module")
def identity() -> Identity:
    return Identity.create()


def connect(core: SfuCore, wire: Wire, peer: Peer, client: ClientPeer, addr: Addr) -> Client:
    """ICE (the client's nominating check, its answer to the SFU's check), then DTLS."""
    dtls = handshake(core, wire.sent, peer, client, addr)
    assert peer.addr == addr and peer.connected_at == core.now()
    assert peer not in core.handshaking
    return Client(peer, addr, dtls)


def publish(core: SfuCore, pub: Client, clock: Clock, seq: int, key: bool) -> None:
    """One packet on every layer, each payload naming its layer."""
    assert pub.dtls.srtp is not None
    for rid in "lmh":
        payload = (IDR if key else bytes([0x41, 0x9A])) + rid.encode() + bytes([seq & 0xFF])
        packet = rtp_header(102, seq, seq * 3000, SSRC[rid], True, rid) + payload
        core.receive_datagram(pub.dtls.srtp.tx.protect(packet), pub.addr, clock.t)


def live_core(identity: Identity, **settings: float) -> tuple[SfuCore, Wire, Clock, Client]:
    """A core with a connected three-layer publisher in room "r" (for other tests)."""
    clock, wire = Clock(), Wire()
    config = {"consent_timeout_s": CONSENT_S, "idle_timeout_s": 1e3, **settings}
    core = SfuCore(SfuSettings(**config), wire, clock)  # type: ignore[arg-type]
    core.start_timer(clock.t)
    client = ClientPeer(identity)
    peer, _ = core.add_publisher("r", client.offer(rids=["h", "m", "l"], publish=True))
    return core, wire, clock, connect(core, wire, peer, client, PUB)


def run_timer(core: SfuCore, clock: Clock, seconds: float) -> None:
    end = clock.t + seconds
    while clock.t < end:
        clock.t = max(core.get_timer(), clock.t)
        core.handle_timer(clock.t)


@pytest.mark.parametrize("fanout", ["native", "python"])
def test_publisher_and_two_viewers_through_the_core_alone(identity: Identity, fanout: str) -> None:
    if fanout == "native":
        require_native()
    clock, wire = Clock(), Wire()
    # no grace for a lost publisher here (test_sfu_publisher_grace.py has it): the consent
    # timeout at the end ends every session and the room at once
    settings = SfuSettings(
        consent_timeout_s=CONSENT_S, idle_timeout_s=1000.0, publisher_grace_s=0, fastpath=fanout
    )
    core = SfuCore(settings, wire, clock)
    core.start_timer(clock.t)
    live: list[tuple[str, bool]] = []
    core.publish_listeners.append(lambda peer, up: live.append((peer.id, up)))

    pub_client = ClientPeer(identity)
    pub_peer, _ = core.add_publisher("r", pub_client.offer(rids=["h", "m", "l"], publish=True))
    pub = connect(core, wire, pub_peer, pub_client, PUB)
    assert live == [(pub_peer.id, True)]
    viewers = []
    for addr, cap in ((V1, 2), (V2, 0)):
        client = ClientPeer(identity)
        peer, _ = core.add_viewer("r", client.offer(), max_layer=cap)
        viewers.append(connect(core, wire, peer, client, addr))
    v1, v2 = viewers

    # RTP in, RTP out: each viewer gets the layer it is capped at, from its keyframe (v1
    # starts on the first keyframe to arrive and climbs as the better ones follow)
    publish(core, pub, clock, 1, key=True)
    publish(core, pub, clock, 2, key=False)
    got1 = [p[-2:] for p in v1.rtp_payloads(wire)]
    assert got1[-2:] == [b"h\x01", b"h\x02"] and set(got1[:-2]) <= {b"l\x01", b"m\x01"}
    assert [p[-2:] for p in v2.rtp_payloads(wire)] == [b"l\x01", b"l\x02"]
    assert core.delivered == len(got1) + 2 and pub_peer.rtp_in == 6

    # a viewer's PLI reaches the publisher, for the layer that viewer watches
    wire.take(PUB)
    assert v1.dtls.srtp is not None
    (video_ssrc,) = [s for s, (t, _) in v1.peer.downtracks.items() if t.kind == "video"]
    clock.t += 1.0
    core.receive_datagram(v1.dtls.srtp.tx.protect_rtcp(rtcp.pli(1, video_ssrc)), V1, clock.t)
    plis = [p for p in pub.rtcp_in(wire) if isinstance(p, rtcp.RtcpPsfbPacket)]
    assert [(p.fmt, p.media_ssrc) for p in plis] == [(rtcp.PSFB_PLI, SSRC["h"])]

    # a layer switch: v2 may now have the top layer; it moves at that layer's keyframe
    core.set_max_layer(v2.peer, 2)
    publish(core, pub, clock, 3, key=False)
    publish(core, pub, clock, 4, key=True)  # l's packet goes out before h's keyframe
    publish(core, pub, clock, 5, key=False)
    assert [p[-2:] for p in v2.rtp_payloads(wire)] == [b"l\x03", b"l\x04", b"h\x04", b"h\x05"]

    # timers: receiver reports to the publisher, sender reports to the viewers
    wire.take(PUB)
    run_timer(core, clock, 2 * max(1.0, core.settings.sr_interval_s))
    assert any(isinstance(p, rtcp.RtcpRrPacket) for p in pub.rtcp_in(wire))
    assert any(isinstance(p, rtcp.RtcpSrPacket) for p in v1.rtcp_in(wire))

    # consent: nobody checks for CONSENT_S: every session ends with a close_notify
    run_timer(core, clock, CONSENT_S + 2 * TICK_S + 1.0)
    assert core.peers == {} and core.rooms == {} and live[-1] == (pub_peer.id, False)
    for client in (pub, v1, v2):
        for d in wire.take(client.addr):
            if d[0] == 21:  # a DTLS alert record
                client.dtls.receive(d)
        assert client.dtls.state == DtlsState.CLOSED, client.addr
