"""RTCP reading: padding (RFC 3550 §6.4.1) as Chrome sends it, feedback kinds, bad input."""

from __future__ import annotations

import struct

import pytest

from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu import rtcp, twcc
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import SfuWorker


def chrome_twcc() -> bytes:
    """A transport-cc feedback laid out as libwebrtc writes it: 3 packets received
    (one run-length chunk, three 1-byte deltas), the FCI 13 bytes long, so the packet
    is padded to a word with the P bit set and the count in the last padding octet."""
    fci = struct.pack("!HHI", 0x0102, 3, (0x10 << 8) | 5)  # base, count, ref time | fb count
    fci += struct.pack("!H", (twcc.SMALL << 13) | 3) + bytes([4, 8, 12])
    body = struct.pack("!II", 0x1111, 0x2222) + fci
    pad = -len(body) % 4
    assert pad == 3
    body += bytes(pad - 1) + bytes([pad])
    return struct.pack("!BBH", 0xA0 | twcc.FMT_TWCC, twcc.RTPFB, len(body) // 4) + body


def test_padded_transport_cc_feedback_is_read() -> None:
    packet = chrome_twcc()
    assert packet[0] & 0x20 and len(packet) == 28
    assert rtcp.parse(packet) == []  # not malformed; transport-cc is twcc's to read
    (fb,) = twcc.find_feedback(packet)
    assert (fb.sender_ssrc, fb.media_ssrc, fb.base_seq, fb.fb_count) == (0x1111, 0x2222, 0x102, 5)
    ref = 0x10 * twcc.REF_S
    got = [(seq, round((t - ref) / twcc.TICK_S)) for seq, t in fb.arrivals if t is not None]
    assert got == [(0x102, 4), (0x103, 12), (0x104, 24)]


def test_compound_with_padding_keeps_every_packet() -> None:
    nack = struct.pack("!BBHIIHH", 0x81, rtcp.RTPFB, 3, 1, 0xAB, 100, 0b101)
    # a receiver report padded by 4 octets (P set on the last packet of the compound)
    rr = bytes(rtcp.RtcpRrPacket(ssrc=7))
    padded_rr = bytes([rr[0] | 0x20, rr[1]]) + struct.pack("!H", 2) + rr[4:] + bytes([0, 0, 0, 4])
    pli = rtcp.pli(1, 0xAB)
    out = rtcp.parse(nack + chrome_twcc() + pli + padded_rr)
    assert [type(p).__name__ for p in out] == ["RtcpRtpfbPacket", "RtcpPsfbPacket", "RtcpRrPacket"]
    assert out[0].lost == [100, 101, 103]  # type: ignore[attr-defined]
    assert out[2].ssrc == 7  # type: ignore[attr-defined]


def test_reports_with_profile_extensions_are_read() -> None:
    sr = rtcp.sender_report(9, 1_700_000_000.5, 1234, 10, 1000)
    extended = bytes([sr[0], sr[1]]) + struct.pack("!H", (len(sr) + 8) // 4 - 1) + sr[4:]
    (pkt,) = rtcp.parse(extended + bytes(8))
    assert isinstance(pkt, rtcp.RtcpSrPacket) and pkt.sender_info.rtp_timestamp == 1234


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\xc9\x00",  # header truncated
        b"\x40\xc9\x00\x01" + bytes(4),  # version 1
        b"\x80\xc9\x00\x02" + bytes(4),  # length beyond the datagram
        b"\xa0\xc9\x00\x01" + bytes(4),  # padding count 0
        b"\xa0\xc9\x00\x01" + bytes(3) + b"\x09",  # padding longer than the body
        b"\x81\xc9\x00\x01" + bytes(4),  # one report block announced, none present
        b"\x81\xcd\x00\x01" + bytes(4),  # NACK shorter than its SSRCs
    ],
)
def test_malformed_rtcp_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        rtcp.parse(data)


class _PlainSrtp:
    def __init__(self) -> None:
        self.rx = self.tx = self

    def unprotect_rtcp(self, data: bytes) -> bytes:
        return data


def test_worker_counts_no_malformed_rtcp_for_padded_feedback() -> None:
    w = SfuWorker(SfuSettings(), clock=lambda: 100.0)
    ident = Identity.create()
    w.add_publisher("r", ClientPeer(ident).offer(publish=True))
    viewer, _ = w.add_viewer("r", ClientPeer(ident).offer())
    viewer.srtp = _PlainSrtp()  # type: ignore[assignment]
    for _ in range(10):
        w._rtcp(viewer, chrome_twcc())
    assert viewer.rtcp_in == 10 and "rtcp_malformed" not in w.drops
