"""Session bookkeeping of the worker with a fake clock and no socket: timeouts,
teardown, demultiplexing of junk."""

from __future__ import annotations

import struct
import time

import pytest
from aioice import stun

from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu import twcc
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import SessionError, SfuWorker


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def identity() -> Identity:
    return Identity.create()


def make(clock: Clock, **kw: float) -> SfuWorker:
    return SfuWorker(SfuSettings(**kw), clock=clock)  # type: ignore[arg-type]


def test_publisher_viewer_lifecycle_and_teardown(identity: Identity) -> None:
    clock = Clock()
    w = make(clock)
    with pytest.raises(SessionError) as no_pub:
        w.add_viewer("r", ClientPeer(identity).offer())
    assert no_pub.value.status == 404
    pub, answer = w.add_publisher(
        "r", ClientPeer(identity).offer(rids=["h", "m", "l"], publish=True)
    )
    assert "a=ice-lite" in answer and set(w.rooms["r"].tracks) == {"audio", "video"}
    with pytest.raises(SessionError) as dup:
        w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    assert dup.value.status == 409
    viewers = [w.add_viewer("r", ClientPeer(identity).offer())[0] for _ in range(3)]
    assert len(w.peers) == 4
    w.close_peer(viewers[0], "DELETE")
    assert viewers[0].id not in w.peers and len(w.rooms["r"].viewers) == 2
    w.close_peer(pub, "DELETE")  # the stream ends: its viewers end with it
    assert w.peers == {} and w.rooms == {} and w.by_ufrag == {}


def test_capacity_is_503(identity: Identity) -> None:
    w = make(Clock(), max_peers=1)
    w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    with pytest.raises(SessionError) as full:
        w.add_viewer("r", ClientPeer(identity).offer())
    assert full.value.status == 503


def test_overload_refuses_new_sessions(identity: Identity) -> None:
    clock = Clock()
    cpu = [0.0]
    w = SfuWorker(SfuSettings(max_load=0.9), clock=clock, cpu_clock=lambda: cpu[0])
    w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    for busy in (0.5, 0.95):
        clock.t += 1.0
        cpu[0] += busy
        w.tick(clock.t)
    assert w.load == pytest.approx(0.95)
    with pytest.raises(SessionError, match="overloaded") as over:
        w.add_viewer("r", ClientPeer(identity).offer())
    assert over.value.status == 503
    clock.t += 1.0
    cpu[0] += 0.3
    w.tick(clock.t)
    w.add_viewer("r", ClientPeer(identity).offer())


def test_load_is_the_sfus_own_work_not_the_process(identity: Identity) -> None:
    """Issue 14.4: CPU this process spends outside the SFU's handlers (HTTP, chat) does not
    count; time in its datagram handlers does. Before, the gate read the process's CPU, so
    an HTTP flood made every WHIP a 503."""
    clock = Clock()
    w = SfuWorker(SfuSettings(max_load=0.9), clock=clock)
    w.tick(clock.t)
    start = time.process_time()
    deadline = time.monotonic() + 60
    while time.process_time() - start < 1.2 and time.monotonic() < deadline:
        sum(i * i for i in range(10_000))  # "HTTP" work: a second of this process's CPU
    assert time.process_time() - start >= 1.2
    clock.t += 1.0
    w.tick(clock.t)
    assert w.load < 0.5
    w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    # the SFU's own handlers: a busy clock that advances 0.2 s per reading
    busy = [0.0]

    def busy_clock() -> float:
        busy[0] += 0.1
        return busy[0]

    w = SfuWorker(SfuSettings(max_load=0.9), clock=clock, busy_clock=busy_clock)
    w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    w.tick(clock.t)
    for _ in range(10):
        w.datagram_received(b"\xff junk", ("127.0.0.1", 9))  # 0.1 s each
    clock.t += 1.0
    w.tick(clock.t)
    assert w.load >= 0.95
    with pytest.raises(SessionError, match="overloaded"):
        w.add_viewer("r", ClientPeer(identity).offer())


def test_viewers_leave_a_share_to_publishers(identity: Identity) -> None:
    """Issue 14.4: viewers are refused at SFU_MAX_PEERS less the publishers' reserve."""
    w = make(Clock(), max_peers=20, publisher_reserve=0.1)
    w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    for _ in range(17):
        w.add_viewer("r", ClientPeer(identity).offer())
    with pytest.raises(SessionError) as full:
        w.add_viewer("r", ClientPeer(identity).offer())
    assert full.value.status == 503 and len(w.peers) == 18
    w.add_publisher("r2", ClientPeer(identity).offer(publish=True))
    w.add_publisher("r3", ClientPeer(identity).offer(publish=True))
    with pytest.raises(SessionError):
        w.add_publisher("r4", ClientPeer(identity).offer(publish=True))


def test_connecting_sessions_limited_per_identity_and_address(identity: Identity) -> None:
    """Issue 14.4: a token, or an address, holds only so many sessions that have not
    connected yet (each holds a DTLS context and a slot for SFU_CONNECT_TIMEOUT)."""
    clock = Clock()
    w = make(clock, max_connecting_per_identity=2, max_connecting_per_address=3)
    w.add_publisher("r", ClientPeer(identity).offer(publish=True), "pub", "10.0.0.1")
    offer = ClientPeer(identity).offer()
    a = [w.add_viewer("r", offer, owner="a", source="10.0.0.2")[0] for _ in range(2)]
    with pytest.raises(SessionError) as same_token:
        w.add_viewer("r", offer, owner="a", source="10.0.0.9")
    assert same_token.value.status == 429 and "token" in str(same_token.value)
    w.add_viewer("r", offer, owner="b", source="10.0.0.2")
    with pytest.raises(SessionError) as same_address:
        w.add_viewer("r", offer, owner="c", source="10.0.0.2")
    assert same_address.value.status == 429 and "address" in str(same_address.value)
    w.add_viewer("r", offer, owner="c", source="10.0.0.3")  # others are not affected
    w.close_peer(a[0], "DELETE")  # a session that ends frees its slot
    w.add_viewer("r", offer, owner="a", source="10.0.0.2")
    clock.t += 16  # and so does one that never connects (all of them here)
    w.tick(clock.t)
    assert not w.connecting and not w.peers
    w.add_publisher("r", ClientPeer(identity).offer(publish=True), "a", "10.0.0.2")
    w.add_viewer("r", offer, owner="a", source="10.0.0.2")


def test_unfinished_handshake_and_lost_consent_close_sessions(identity: Identity) -> None:
    clock = Clock()
    w = make(clock, connect_timeout_s=15.0, consent_timeout_s=30.0)
    pub, _ = w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    clock.t += 10
    w.tick(clock.t)
    assert pub.id in w.peers
    clock.t += 6
    w.tick(clock.t)
    assert pub.id not in w.peers  # no ICE/DTLS within 15 s

    pub, _ = w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    w.handshaking.discard(pub)  # as if DTLS had completed
    pub.ice.last_check = clock.t
    clock.t += 29
    w.tick(clock.t)
    assert pub.id in w.peers
    clock.t += 2
    w.tick(clock.t)
    assert pub.id not in w.peers  # no consent check for 31 s


def test_idle_publisher_is_closed(identity: Identity) -> None:
    clock = Clock()
    w = make(clock, idle_timeout_s=30.0, consent_timeout_s=1000.0)
    pub, _ = w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    w.handshaking.discard(pub)
    pub.connected_at = clock.t
    for _ in range(40):  # media keeps flowing: never idle
        clock.t += 1
        pub.rtp_in += 10
        w.tick(clock.t)
    assert pub.id in w.peers
    for _ in range(30):
        clock.t += 1
        w.tick(clock.t)
    assert pub.id in w.peers
    clock.t += 2
    w.tick(clock.t)
    assert pub.id not in w.peers


def test_junk_datagrams_are_counted_not_raised(identity: Identity) -> None:
    w = make(Clock())
    w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    addr = ("127.0.0.1", 5555)
    bad_creds = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    bad_creds.attributes["USERNAME"] = "nobody:x"
    bad_creds.add_message_integrity(b"x" * 22)
    for data in (
        b"",
        b"\x00",
        b"\x16\xfe\xfd" + bytes(20),
        b"\x80\x60" + bytes(20),
        b"\xff",
        bytes(bad_creds),
    ):
        w.datagram_received(data, addr)
    assert w.drops["empty"] == 1 and w.drops["error"] == 0
    assert w.drops["dtls_unknown_peer"] == 1
    assert w.drops["rtp_unknown_peer"] == 1
    assert w.drops["unknown_first_byte"] == 1
    assert w.drops["stun_unknown_ufrag"] == 1
    assert w.drops["stun_malformed_STUN"] == 1


class _PlainSrtp:
    """SRTP that does not encrypt: what the worker sends is readable as it is."""

    def __init__(self) -> None:
        self.rx = self.tx = self

    def unprotect(self, data: bytes) -> bytes:
        return data

    def protect_rtcp(self, data: bytes) -> bytes:
        return data


def test_publisher_gets_transport_cc_feedback_every_tick(identity: Identity) -> None:
    clock = Clock()
    w = make(clock)
    pub, _ = w.add_publisher("r", ClientPeer(identity).offer(publish=True))
    assert pub.twcc_in is None  # this offer has no transport-wide CC extension
    pub.twcc_in, pub.twcc_in_ext = twcc.TwccReceiver(), 5
    sent: list[bytes] = []
    pub.srtp, pub.addr, pub.send = _PlainSrtp(), ("127.0.0.1", 9), sent.append  # type: ignore[assignment]
    pt = next(pt for pt, t in pub.track_by_pt.items() if t.kind == "video")
    for k, tseq in enumerate([7, 8, 10]):
        clock.t += 0.01
        head = struct.pack("!BBHII", 0x90, pt, 1000 + k, 90 * k, 0xABC)
        w._rtp(pub, head + struct.pack("!HHBHB", 0xBEDE, 1, 0x51, tseq, 0) + b"\x00" * 20)
    w.tick(clock.t)
    (fb,) = [f for packet in sent for f in twcc.find_feedback(packet)]
    assert fb.media_ssrc == 0xABC and fb.base_seq == 7
    assert [a is not None for _, a in fb.arrivals] == [True, True, False, True]
    assert fb.arrivals[3][1] == pytest.approx(clock.t, abs=0.00025)
    sent.clear()
    w.tick(clock.t + 0.1)
    assert sent == []  # nothing new: no feedback


def test_dtls_from_an_unconfirmed_address_waits_for_its_answer(identity: Identity) -> None:
    """Issue 14.6: a handshake that overtakes the answer to our check is held, then handled
    once the address answers; media goes nowhere before (peer.addr stays None)."""
    from types import SimpleNamespace

    from aiortc.sdp import SessionDescription

    from tchat.sfu.dtls import DtlsEndpoint

    w = make(Clock())
    sent: list[tuple[bytes, tuple[str, int]]] = []
    w.transport = SimpleNamespace(sendto=lambda d, a: sent.append((d, a)))  # type: ignore[assignment]
    client = ClientPeer(identity)
    pub, answer = w.add_publisher("r", client.offer(publish=True))
    ice = SessionDescription.parse(answer).media[0].ice
    assert ice is not None
    addr = ("127.0.0.1", 5555)
    check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    check.attributes["USERNAME"] = f"{ice.usernameFragment}:{client.ufrag}"
    check.attributes["ICE-CONTROLLING"] = 1
    check.attributes["USE-CANDIDATE"] = None
    check.add_message_integrity(str(ice.password).encode())
    w.datagram_received(bytes(check), addr)
    (response, _), (ours, _) = sent
    assert stun.parse_message(response).message_class == stun.Class.RESPONSE
    ours_msg = stun.parse_message(ours)
    assert ours_msg.message_class == stun.Class.REQUEST
    assert pub.addr is None  # nominated, not confirmed
    dtls = DtlsEndpoint(
        identity.ctx, server=False, remote_fingerprints=[("sha-256", w.fingerprint)]
    )
    dtls.start()
    sent.clear()
    for datagram in dtls.datagrams_to_send():
        w.datagram_received(datagram, addr)
    assert sent == [] and pub.held  # held, not answered
    reply = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, ours_msg.transaction_id)
    reply.attributes["XOR-MAPPED-ADDRESS"] = addr
    reply.add_message_integrity(client.pwd.encode())
    w.datagram_received(bytes(reply), addr)
    assert addr in pub.ice.confirmed and pub.addr == addr and not pub.held
    assert any(d[0] == 22 for d, a in sent if a == addr)  # the server's handshake flight
