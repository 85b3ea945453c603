"""RTP helpers, ICE-lite checks and a DTLS-SRTP handshake between two memory endpoints."""

from __future__ import annotations

import struct

import pytest
from aioice import stun
from aiortc.rtcdtlstransport import RTCCertificate

from tchat.sfu.dtls import DtlsEndpoint, DtlsState, fingerprint, make_context, split_records
from tchat.sfu.ice import UNCONFIRMED_ALLOWANCE, IceLite, StunError, parse_request
from tchat.sfu.rtp import (
    RtpError,
    h264_keyframe_start,
    header_extension,
    is_rtcp,
    payload_bounds,
    vp8_keyframe_start,
)


def test_keyframe_detection() -> None:
    assert h264_keyframe_start(b"\x67\x42")  # SPS
    assert h264_keyframe_start(b"\x7c\x85")  # FU-A start of IDR
    assert not h264_keyframe_start(b"\x7c\x05")  # FU-A continuation
    assert h264_keyframe_start(b"\x78\x00\x02\x67\x42\x00\x02\x68\xce")  # STAP-A with SPS
    assert not h264_keyframe_start(b"\x41\x9a")
    assert vp8_keyframe_start(b"\x10\x00")
    assert vp8_keyframe_start(b"\x90\x80\x81\x02\x00")  # X, I with 15-bit picture id
    assert not vp8_keyframe_start(b"\x10\x01")  # inter frame
    assert not vp8_keyframe_start(b"\x00\x00")  # not a partition start
    assert not h264_keyframe_start(b"") and not vp8_keyframe_start(b"\x90")


def test_header_extension_and_bounds() -> None:
    ext = struct.pack("!HH", 0xBEDE, 1) + bytes([0x31, ord("h"), ord("i"), 0])
    pkt = struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + ext + b"payload"
    assert header_extension(pkt, 3) == b"hi"
    assert header_extension(pkt, 4) is None
    assert payload_bounds(pkt) == (20, 27)
    two_byte = struct.pack("!HH", 0x1000, 1) + bytes([5, 2, ord("m"), ord("x")])
    assert header_extension(struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + two_byte, 5) == b"mx"
    with pytest.raises(RtpError):
        payload_bounds(b"\x80\x60\x00")
    with pytest.raises(RtpError):
        payload_bounds(struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + struct.pack("!HH", 0xBEDE, 9))
    assert is_rtcp(b"\x80\xc8") and not is_rtcp(b"\x80\x60")


def _request(username: str, pwd: str, controlling: bool = True, use: bool = False) -> bytes:
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1
    if controlling:
        msg.attributes["ICE-CONTROLLING"] = 7
    if use:
        msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(pwd.encode())
    return bytes(msg)


def test_ice_lite_answers_and_nominates() -> None:
    ice = IceLite("ours", "o" * 22, "theirs", created_at=0.0)
    msg, ufrag = parse_request(_request("ours:theirs", "o" * 22))
    assert ufrag == "ours"
    resp = stun.parse_message(ice.handle(msg, ("127.0.0.1", 5000), now=1.0)[0])
    assert resp.message_class == stun.Class.RESPONSE
    assert resp.attributes["XOR-MAPPED-ADDRESS"] == ("127.0.0.1", 5000)
    assert resp.check_message_integrity(b"o" * 22)
    assert ice.nominated is None
    msg, _ = parse_request(_request("ours:theirs", "o" * 22, use=True))
    ice.handle(msg, ("127.0.0.1", 5000), now=2.0)
    assert ice.nominated == ("127.0.0.1", 5000)
    assert not ice.consent_expired(31.0, 30.0) and ice.consent_expired(32.5, 30.0)


def _answer(check: bytes, pwd: str, txid: bytes | None = None) -> stun.Message:
    req = stun.parse_message(check)
    resp = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, txid or req.transaction_id)
    resp.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 1)
    resp.add_message_integrity(pwd.encode())
    return stun.parse_message(bytes(resp))


def test_address_confirmed_only_by_answering_our_check() -> None:
    """Issue 14.6: an authenticated check (even with USE-CANDIDATE) does not prove its source
    receives; answering our check, with a fresh transaction id and the peer's password, does."""
    ice = IceLite("ours", "o" * 22, "theirs", created_at=0.0, remote_pwd="t" * 22)
    a = ("127.0.0.1", 5000)
    data = _request("ours:theirs", "o" * 22, use=True)
    msg, _ = parse_request(data)
    _response, check = ice.handle(msg, a, now=1.0, size=len(data))
    assert ice.nominated == a and a not in ice.confirmed
    req = stun.parse_message(check)
    assert req.message_class == stun.Class.REQUEST
    assert req.attributes["USERNAME"] == "theirs:ours" and "ICE-CONTROLLED" in req.attributes
    assert req.check_message_integrity(b"t" * 22)
    assert not ice.handle_response(_answer(check, "t" * 22, txid=bytes(12)), a)  # not ours
    assert not ice.handle_response(_answer(check, "x" * 22), a)  # not signed by the peer
    assert not ice.handle_response(_answer(check, "t" * 22), ("127.0.0.1", 6000))  # elsewhere
    assert ice.handle_response(_answer(check, "t" * 22), a)
    assert a in ice.confirmed
    msg, _ = parse_request(data)
    assert len(ice.handle(msg, a, now=2.0, size=len(data))) == 1  # confirmed: no more checks


def test_unconfirmed_address_gets_no_more_than_it_sent() -> None:
    """A spoofed source (which never answers) gets our answers and checks within the bytes
    the requests carried plus one allowance, however many requests come."""
    ice = IceLite("ours", "o" * 22, "theirs", created_at=0.0, remote_pwd="t" * 22)
    victim = ("192.0.2.1", 9)
    data = _request("ours:theirs", "o" * 22, use=True)
    sent = received = 0
    for i in range(200):
        msg, _ = parse_request(data)
        out = ice.handle(msg, victim, now=i * 0.3, size=len(data))
        received += len(data)
        sent += sum(len(d) for d in out)
        assert sent <= received + UNCONFIRMED_ALLOWANCE
    assert victim not in ice.confirmed and ice.nominated == victim
    for port in range(7):  # at most MAX_ADDRESSES addresses per session
        msg, _ = parse_request(data)
        ice.handle(msg, ("192.0.2.1", 100 + port), now=100.0, size=len(data))
    with pytest.raises(StunError, match="too many addresses"):
        msg, _ = parse_request(data)
        ice.handle(msg, ("192.0.2.2", 1), now=100.0, size=len(data))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x01\x00", "malformed"),
        (_request("ours:theirs", "wrong-password-xxxxxxxx"), "MESSAGE-INTEGRITY"),
        (_request("ours:other", "o" * 22), "USERNAME"),
        (_request("ours:theirs", "o" * 22, controlling=False), "controlling"),
        (bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)), "binding request"),
    ],
)
def test_ice_lite_rejects_bad_checks(data: bytes, reason: str) -> None:
    ice = IceLite("ours", "o" * 22, "theirs", created_at=0.0)
    with pytest.raises(StunError, match=reason):
        msg, _ = parse_request(data)
        ice.handle(msg, ("127.0.0.1", 1), now=0.0)


def _pump(a: DtlsEndpoint, b: DtlsEndpoint) -> None:
    for _ in range(10):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for d in src.datagrams_to_send():
                assert len(d) <= 1200
                dst.receive(d)
                moved = True
        if not moved:
            return


def test_dtls_srtp_handshake_and_keys_interoperate() -> None:
    server_cert, client_cert = (
        RTCCertificate.generateCertificate(),
        RTCCertificate.generateCertificate(),
    )
    server = DtlsEndpoint(make_context(server_cert), True, [("sha-256", fingerprint(client_cert))])
    client = DtlsEndpoint(make_context(client_cert), False, [("sha-256", fingerprint(server_cert))])
    client.start()
    _pump(client, server)
    assert server.state == client.state == DtlsState.CONNECTED
    assert server.srtp is not None and client.srtp is not None
    assert server.srtp.profile == "SRTP_AEAD_AES_128_GCM"
    rtp = struct.pack("!BBHII", 0x80, 96, 1, 2, 3) + b"x" * 100
    assert client.srtp.rx.unprotect(server.srtp.tx.protect(rtp)) == rtp
    assert server.srtp.rx.unprotect(client.srtp.tx.protect(rtp)) == rtp
    client.close()
    for d in client.datagrams_to_send():
        server.receive(d)
    assert server.state == DtlsState.CLOSED


def test_dtls_rejects_certificate_not_matching_fingerprint() -> None:
    server_cert, client_cert = (
        RTCCertificate.generateCertificate(),
        RTCCertificate.generateCertificate(),
    )
    other = fingerprint(RTCCertificate.generateCertificate())
    server = DtlsEndpoint(make_context(server_cert), True, [("sha-256", other)])
    client = DtlsEndpoint(make_context(client_cert), False, [("sha-256", fingerprint(server_cert))])
    client.start()
    _pump(client, server)
    assert server.state == DtlsState.FAILED and "fingerprint" in server.error
    assert server.srtp is None


def test_dtls_garbage_fails_cleanly() -> None:
    server = DtlsEndpoint(make_context(RTCCertificate.generateCertificate()), True, [])
    server.receive(b"\x16\xfe\xfd" + b"\x00" * 10 + b"\xff\xff" + b"junk")
    assert server.state in (DtlsState.FAILED, DtlsState.HANDSHAKE)


def test_split_records_packs_whole_records() -> None:
    rec = b"\x16\xfe\xfd" + bytes(8) + struct.pack("!H", 500) + bytes(500)
    out = split_records(rec * 5)
    assert [len(d) for d in out] == [1026, 1026, 513]
