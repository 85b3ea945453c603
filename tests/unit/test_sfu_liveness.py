"""Liveness of a session without consent checks, and close_notify when the SFU ends it.

A real DTLS client (our DtlsEndpoint in the client role) handshakes with the worker
over a fake socket and a fake clock; what a libnice publisher sends after that is
what keeps it: SRTP/SRTCP that passes authentication from the selected address, and
binding indications (accepted, but they prove nothing on their own)."""

from __future__ import annotations

import struct

from aioice import stun

from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu.dtls import DtlsEndpoint, DtlsState
from tchat.sfu.ice import Keepalive, parse_request
from tchat.sfu.rtcp import receiver_report
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import Peer, SfuWorker

ADDR = ("127.0.0.1", 40000)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Wire:
    """The worker's socket: what it sends, by destination."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def take(self) -> list[bytes]:
        out = [d for d, _ in self.sent]
        self.sent.clear()
        return out


def connected(clock: Clock, role: str = "publisher") -> tuple[SfuWorker, Wire, Peer, DtlsEndpoint]:
    """A worker with one publisher (and a viewer if `role` is viewer) whose ICE check
    nominated ADDR and whose DTLS handshake with a real client completed."""
    w = SfuWorker(SfuSettings(consent_timeout_s=30.0, idle_timeout_s=1000.0), clock=clock)
    wire = Wire()
    w.transport = wire  # type: ignore[assignment]
    ident = Identity.create()
    client = ClientPeer(ident)
    pub, _ = w.add_publisher("r", client.offer(publish=True))
    peer = pub
    if role == "viewer":
        w.handshaking.discard(pub)  # the publisher stays: only the viewer is under test
        pub.ice.last_check = 1e9
        client = ClientPeer(ident)
        peer, _ = w.add_viewer("r", client.offer())
    check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    check.attributes["USERNAME"] = f"{peer.ice.local_ufrag}:{peer.ice.remote_ufrag}"
    check.attributes["ICE-CONTROLLING"] = 1
    check.attributes["USE-CANDIDATE"] = None
    check.add_message_integrity(peer.ice.local_pwd.encode())
    w.datagram_received(bytes(check), ADDR)
    # the address is used once it answers the SFU's own check (issue 14.6), as peers do
    (ours,) = [
        m for m in map(stun.parse_message, wire.take()) if m.message_class == stun.Class.REQUEST
    ]
    reply = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, ours.transaction_id)
    reply.attributes["XOR-MAPPED-ADDRESS"] = ADDR
    reply.add_message_integrity(client.pwd.encode())
    w.datagram_received(bytes(reply), ADDR)
    assert peer.addr == ADDR
    dtls = DtlsEndpoint(ident.ctx, server=False, remote_fingerprints=[("sha-256", w.fingerprint)])
    dtls.start()
    for _ in range(10):
        for d in dtls.datagrams_to_send():
            w.datagram_received(d, ADDR)
        for d in wire.take():
            if 20 <= d[0] <= 63:
                dtls.receive(d)
    assert dtls.state == DtlsState.CONNECTED and peer.srtp is not None
    return w, wire, peer, dtls


def indication() -> bytes:
    msg = stun.Message(stun.Method.BINDING, stun.Class.INDICATION)
    msg.add_fingerprint()
    return bytes(msg)  # what libnice sends: no USERNAME, no MESSAGE-INTEGRITY


def tick_seconds(w: SfuWorker, clock: Clock, seconds: int, each: object = None) -> None:
    for _ in range(seconds):
        clock.t += 1.0
        if callable(each):
            each()
        w.tick(clock.t)


def test_binding_indication_is_a_keepalive_not_a_bad_request() -> None:
    try:
        parse_request(indication())
    except Keepalive:
        pass
    else:
        raise AssertionError("an indication is not a request to answer")


def test_publisher_media_keeps_the_session_without_consent_checks() -> None:
    clock = Clock()
    w, _, pub, dtls = connected(clock)
    assert dtls.srtp is not None
    seq = [0]

    def media_and_keepalive() -> None:
        seq[0] += 1
        rtp = struct.pack("!BBHII", 0x80, 102, seq[0], 90 * seq[0], 0x77) + b"\x41" + bytes(99)
        w.datagram_received(dtls.srtp.tx.protect(rtp), ADDR)  # type: ignore[union-attr]
        w.datagram_received(indication(), ADDR)

    tick_seconds(w, clock, 60, media_and_keepalive)  # twice the consent timeout
    assert pub.id in w.peers and w.keepalives == 60
    assert "stun_not_a_binding_request" not in w.drops


def test_rtcp_alone_keeps_a_viewer() -> None:
    clock = Clock()
    w, _, viewer, dtls = connected(clock, role="viewer")

    def report() -> None:
        w.datagram_received(dtls.srtp.tx.protect_rtcp(receiver_report(5, [])), ADDR)  # type: ignore[union-attr]

    tick_seconds(w, clock, 60, report)
    assert viewer.id in w.peers


def test_indications_or_forged_media_alone_do_not_keep_a_session() -> None:
    clock = Clock()
    w, _, pub, _ = connected(clock)
    forged = struct.pack("!BBHII", 0x80, 102, 1, 0, 0x77) + bytes(60)

    def unauthenticated() -> None:
        w.datagram_received(indication(), ADDR)
        w.datagram_received(forged, ADDR)  # fails SRTP authentication

    tick_seconds(w, clock, 29, unauthenticated)
    assert pub.id in w.peers
    tick_seconds(w, clock, 3, unauthenticated)
    assert pub.id not in w.peers and w.drops["srtp_unprotect"] >= 29


def test_media_from_another_address_does_not_keep_the_session() -> None:
    clock = Clock()
    w, _, pub, dtls = connected(clock)
    other = ("127.0.0.1", 40001)
    w.by_addr[other] = pub  # a candidate that passed a check but was not selected

    def media_elsewhere() -> None:
        rtp = struct.pack("!BBHII", 0x80, 102, int(clock.t), 0, 0x77) + b"\x41" + bytes(50)
        w.datagram_received(dtls.srtp.tx.protect(rtp), other)  # type: ignore[union-attr]

    tick_seconds(w, clock, 32, media_elsewhere)
    assert pub.id not in w.peers


def test_consent_timeout_tells_the_peer_with_close_notify() -> None:
    clock = Clock()
    w, wire, pub, dtls = connected(clock)
    viewer_w, viewer_wire, viewer, viewer_dtls = connected(Clock(), role="viewer")
    for worker, wire_, peer, client, clk in (
        (w, wire, pub, dtls, clock),
        (viewer_w, viewer_wire, viewer, viewer_dtls, None),
    ):
        if clk is None:  # the viewer's worker: end it by its publisher leaving
            worker.close_peer(next(p for p in worker.peers.values() if p.role == "publisher"), "x")
        else:
            tick_seconds(worker, clk, 31)
        assert peer.id not in worker.peers
        sent = wire_.take()
        alerts = [d for d in sent if d[0] == 21]  # DTLS record type alert
        assert alerts, f"no DTLS alert among {[d[:1] for d in sent]}"
        for d in alerts:
            client.receive(d)
        assert client.state == DtlsState.CLOSED  # the client read a close_notify
