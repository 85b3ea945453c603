"""ICE over TCP without sockets: RFC 4571 framing, and the core serving a viewer whose
address is a TCP connection (`SfuCore.streams`): ICE, DTLS and media go through the
connection, never the UDP socket; a closed connection stops media until the viewer
nominates another address; the answer and a restart fragment offer the TCP candidate."""

from __future__ import annotations

import pytest

from tchat.perf.sfu_bench import handshake
from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu import sdpfrag
from tchat.sfu.tcp import Framer, FramingError, frame, tcp_addr, wire_addr
from tests.unit.test_sfu_core import Client, live_core, publish

TCP_VIEWER = tcp_addr("10.0.0.9", 40123)


class Stream:
    """A TCP connection as the core sees it: what was written into it, and closed."""

    def __init__(self, out: list[tuple[bytes, tuple[str, int]]]) -> None:
        self.out = out
        self.closed = False

    def write(self, packet: bytes) -> None:
        assert not self.closed
        self.out.append((packet, TCP_VIEWER))

    def close(self) -> None:
        self.closed = True


def test_framer_splits_and_joins_frames() -> None:
    framer = Framer()
    stream = frame(b"abc") + frame(b"x" * 1500) + frame(b"tail")
    got: list[bytes] = []
    for i in range(0, len(stream), 7):  # arbitrary TCP segment boundaries
        got += framer.feed(stream[i : i + 7])
    assert got == [b"abc", b"x" * 1500, b"tail"]
    assert framer.feed(b"") == []


@pytest.mark.parametrize("bad", [b"\x00\x00", b"\xff\xff", b"GET / HTTP/1.1\r\n"])
def test_framer_refuses_what_is_not_a_packet(bad: bytes) -> None:
    with pytest.raises(FramingError):
        Framer().feed(bad)


def test_a_viewer_over_a_tcp_connection() -> None:
    identity = Identity.create()
    core, wire, clock, pub = live_core(identity)
    core.port, core.tcp_port = 5000, 5001

    client = ClientPeer(identity)
    peer, answer = core.add_viewer("r", client.offer(), max_layer=0)
    assert (
        "a=candidate:2 1 tcp 1518280447 " in answer and " 5001 typ host tcptype passive" in answer
    )
    framed: list[tuple[bytes, tuple[str, int]]] = []  # what went into the connection
    core.streams[TCP_VIEWER] = Stream(framed)
    dtls = handshake(core, framed, peer, client, TCP_VIEWER)  # ICE + DTLS over the stream
    # the same (ip, port) over UDP (another user behind the same NAT) is someone else
    assert wire_addr(TCP_VIEWER) not in core.by_addr and core.by_addr[TCP_VIEWER] is peer
    viewer = Client(peer, TCP_VIEWER, dtls)
    publish(core, pub, clock, 1, key=True)
    assert not [a for _, a in wire.sent if a == TCP_VIEWER]  # none by the UDP socket
    wire.sent += framed  # read the connection like the socket
    framed.clear()
    assert [p[-2:] for p in viewer.rtp_payloads(wire)] == [b"l\x01"]

    # the connection closes: nothing more is sent anywhere for the viewer, which stays
    core.stream_closed(TCP_VIEWER)
    assert peer.addr is None and TCP_VIEWER not in core.by_addr
    publish(core, pub, clock, 2, key=False)
    assert framed == [] and not [a for _, a in wire.sent if a == TCP_VIEWER]
    assert not peer.closed

    restart = core.patch_ice(peer, sdpfrag.IceFragment("newU", "n" * 24))
    assert restart is not None and "a=candidate:2 1 tcp 1518280447 " in restart


def test_the_connection_of_an_ended_session_is_closed() -> None:
    identity = Identity.create()
    core = live_core(identity)[0]
    client = ClientPeer(identity)
    peer, _ = core.add_viewer("r", client.offer(), max_layer=0)
    framed: list[tuple[bytes, tuple[str, int]]] = []
    core.streams[TCP_VIEWER] = stream = Stream(framed)
    handshake(core, framed, peer, client, TCP_VIEWER)
    core.close_peer(peer, "DELETE")
    assert stream.closed and TCP_VIEWER not in core.by_addr
    assert any(d[0] == 21 for d, _ in framed)  # its close_notify went first
