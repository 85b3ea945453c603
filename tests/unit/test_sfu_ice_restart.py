"""ICE restart and trickle ICE (WHIP/WHEP PATCH, RFC 9725 §4.3) in the SFU core, with a
fake clock and no socket: the fragment parser, and a viewer that restarts ICE and moves
to a new address mid-stream, keeping its session, DTLS association and SRTP keys."""

from __future__ import annotations

import pytest
from aioice import stun

from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu import sdpfrag
from tchat.sfu.admission import SessionError
from tchat.sfu.core import SfuCore
from tchat.sfu.negotiated import SdpError
from tests.unit.test_sfu_core import PUB, V1, Client, Wire, connect, live_core, publish

MOVED = ("10.9.9.9", 7000)
CONSENT_S = 30.0

CHROME_RESTART = (
    "a=ice-options:trickle ice2\r\n"
    "a=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=mid:0\r\n"
    "a=ice-ufrag:Zx9q\r\n"
    "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
    "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n"
    "a=end-of-candidates\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 102\r\n"
    "a=mid:1\r\n"
    "a=ice-ufrag:Zx9q\r\n"
    "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
)


@pytest.fixture(scope="module")
def identity() -> Identity:
    return Identity.create()


def test_fragment_parsed_from_media_sections() -> None:
    frag = sdpfrag.parse_fragment(CHROME_RESTART)
    assert (frag.ufrag, frag.pwd) == ("Zx9q", "P2uYro0UCOQ4zxjKXaWCBui1")
    assert frag.candidates[0].startswith("1387637174 1 udp") and frag.end_of_candidates
    trickle = sdpfrag.parse_fragment("a=candidate:1 1 udp 1 192.0.2.7 9 typ host\n")
    assert trickle.ufrag is None and len(trickle.candidates) == 1


@pytest.mark.parametrize(
    "body, why",
    [
        ("a=ice-ufrag:abcd\r\na=ice-ufrag:efgh\r\n", "different a=ice-ufrag"),
        ("a=ice-ufrag:ab\r\n", "4-256 ice-chars"),
        ("a=ice-ufrag:abcd\r\na=ice-pwd:short\r\n", "22-256 ice-chars"),
        ("a=ice-ufrag:ab;d\r\n", "ice-chars"),
        ("a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n", "without a=ice-ufrag"),
        ("hello\r\n", "not an SDP line"),
    ],
)
def test_bad_fragments_are_clear_errors(body: str, why: str) -> None:
    with pytest.raises(SdpError, match=why):
        sdpfrag.parse_fragment(body)


def _answer_check(core: SfuCore, wire: Wire, addr: tuple[str, int], pwd: str) -> None:
    """Answer the SFU's own check of `addr` (what makes an address receive media)."""
    for msg in map(stun.parse_message, wire.take(addr)):
        if msg.message_class == stun.Class.REQUEST:
            assert msg.check_message_integrity(pwd.encode())
            reply = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, msg.transaction_id)
            reply.attributes["XOR-MAPPED-ADDRESS"] = addr
            reply.add_message_integrity(pwd.encode())
            core.receive_datagram(bytes(reply), addr, core.now())


def _check(core: SfuCore, addr: tuple[str, int], ufrags: str, pwd: str) -> None:
    """A nominating check from the (controlling) client."""
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    msg.attributes["USERNAME"] = ufrags
    msg.attributes["ICE-CONTROLLING"] = 7
    msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(pwd.encode())
    core.receive_datagram(bytes(msg), addr, core.now())


def _seqs(client: Client, wire: Wire) -> list[int]:
    return [seq for seq, _ in client.video_rtp(wire)]


def test_viewer_restarts_ice_and_moves_to_a_new_address_mid_stream(identity: Identity) -> None:
    core, wire, clock, pub = live_core(identity, consent_timeout_s=CONSENT_S)
    pub_peer = pub.peer
    client = ClientPeer(identity)
    peer, _ = core.add_viewer("r", client.offer(), max_layer=0)
    viewer = connect(core, wire, peer, client, V1)
    old_ufrag = peer.ice.local_ufrag
    publish(core, pub, clock, 1, key=True)
    publish(core, pub, clock, 2, key=False)
    before = _seqs(viewer, wire)
    assert len(before) == 2

    # an If-Match naming another ICE session changes nothing
    restart = sdpfrag.IceFragment("newU", "n" * 24)
    with pytest.raises(SessionError) as refused:
        core.patch_ice(peer, restart, expect=("0ld0",))
    assert refused.value.status == 412 and peer.ice.local_ufrag == old_ufrag
    # trickled candidates of the current generation: accepted, nothing changes
    assert core.patch_ice(peer, sdpfrag.IceFragment(peer.ice.remote_ufrag, None, ("x",))) is None
    assert peer.ice.local_ufrag == old_ufrag
    with pytest.raises(SdpError, match="ice-pwd"):
        core.patch_ice(peer, sdpfrag.IceFragment("newU", None))

    # the restart: new credentials both ways; media goes on to the old address meanwhile
    answer = core.patch_ice(peer, restart, expect=(old_ufrag,))
    assert answer is not None
    ours = sdpfrag.parse_fragment(answer)
    assert ours.ufrag == peer.ice.local_ufrag != old_ufrag and ours.pwd == peer.ice.local_pwd
    assert f"{core.settings.candidate_ip} {core.port} typ host" in ours.candidates[0]
    assert "a=ice-lite" in answer and "m=audio 9 UDP/TLS/RTP/SAVPF" in answer
    publish(core, pub, clock, 3, key=False)
    assert _seqs(viewer, wire) == [before[-1] + 1]
    # the old credentials are gone: a check with them is dropped, unanswered
    _check(core, V1, f"{old_ufrag}:{client.ufrag}", peer.ice.local_pwd)
    assert wire.take(V1) == [] and core.drops["stun_unknown_ufrag"] == 1

    # the viewer's agent moves: a nominating check from the new address, under the new
    # credentials; media follows only once the address answered the SFU's check
    _check(core, MOVED, f"{ours.ufrag}:newU", str(ours.pwd))
    publish(core, pub, clock, 4, key=False)
    assert [d for d in wire.sent if d[1] == MOVED and 128 <= d[0][0] <= 191] == []
    _answer_check(core, wire, MOVED, "n" * 24)
    assert peer.addr == MOVED
    publish(core, pub, clock, 5, key=False)
    moved = Client(peer, MOVED, viewer.dtls)  # same DTLS association, same SRTP keys
    assert _seqs(viewer, wire) == [before[-1] + 2]  # the packet sent before the move
    assert _seqs(moved, wire) == [before[-1] + 3]  # numbering goes on, no gap
    assert peer.id in core.peers and not peer.closed

    # consent: the new path's checks keep the session (the publisher checks as well)
    pub_ice = pub_peer.ice
    for _ in range(3):
        clock.t += CONSENT_S / 2
        _check(core, MOVED, f"{ours.ufrag}:newU", str(ours.pwd))
        _check(core, PUB, f"{pub_ice.local_ufrag}:{pub_ice.remote_ufrag}", pub_ice.local_pwd)
        core.handle_timer(clock.t)
    assert not peer.closed
    clock.t += CONSENT_S + 1.0
    _check(core, PUB, f"{pub_ice.local_ufrag}:{pub_ice.remote_ufrag}", pub_ice.local_pwd)
    core.handle_timer(clock.t)
    assert peer.closed and not pub_peer.closed and core.by_ufrag.keys() == {pub_ice.local_ufrag}
    assert set(core.by_addr) == {PUB}  # the restarted session's addresses, old and new
