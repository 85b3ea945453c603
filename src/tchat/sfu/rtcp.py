"""RTCP we build and read (RFC 3550, 4585), on aiortc's packet classes.

`parse` is our own walk over a compound packet: aiortc's reader treats every RTPFB
as a NACK and wants SR/RR bodies of an exact length, so a padded transport-cc
feedback (Chrome pads it, P bit, RFC 3550 §6.4.1) or a report with a profile
extension made the whole datagram "malformed" and its NACKs and reports were lost.
"""

from __future__ import annotations

from struct import unpack_from

from aiortc.rtp import (
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
)

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970
PSFB_PLI, PSFB_FIR = 1, 4
RTPFB_NACK = 1
SR, RR, RTPFB, PSFB = 200, 201, 205, 206


def ntp_time(unix_s: float) -> int:
    secs = int(unix_s) + NTP_EPOCH_OFFSET
    frac = int((unix_s % 1.0) * (1 << 32))
    return ((secs & 0xFFFFFFFF) << 32) | frac


def sender_report(ssrc: int, unix_s: float, rtp_ts: int, packets: int, octets: int) -> bytes:
    return bytes(
        RtcpSrPacket(
            ssrc=ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp_time(unix_s),
                rtp_timestamp=rtp_ts & 0xFFFFFFFF,
                packet_count=packets & 0xFFFFFFFF,
                octet_count=octets & 0xFFFFFFFF,
            ),
        )
    )


def receiver_report(sender_ssrc: int, blocks: list[RtcpReceiverInfo]) -> bytes:
    return bytes(RtcpRrPacket(ssrc=sender_ssrc, reports=blocks[:31]))


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return bytes(RtcpPsfbPacket(fmt=PSFB_PLI, ssrc=sender_ssrc, media_ssrc=media_ssrc))


def packets(data: bytes) -> list[tuple[int, int, bytes]]:
    """(count/fmt, packet type, body without padding) of each packet of a compound
    RTCP datagram; ValueError on a bad version, length or padding (RFC 3550 §6.4.1:
    with P set, the body's last octet counts the padding octets, itself included)."""
    out = []
    pos = 0
    n = len(data)
    while pos < n:
        if pos + 4 > n:
            raise ValueError("RTCP header truncated")
        b0, pt, words = data[pos], data[pos + 1], (data[pos + 2] << 8) | data[pos + 3]
        if b0 >> 6 != 2:
            raise ValueError("RTCP packet has invalid version")
        end = pos + 4 + 4 * words
        if end > n:
            raise ValueError("RTCP packet truncated")
        body = data[pos + 4 : end]
        if b0 & 0x20:
            pad = body[-1] if body else 0
            if not 0 < pad <= len(body):
                raise ValueError("RTCP padding length is invalid")
            body = body[:-pad]
        out.append((b0 & 0x1F, pt, body))
        pos = end
    return out


def _reports(body: bytes, pos: int, count: int) -> list[RtcpReceiverInfo]:
    if len(body) < pos + 24 * count:
        raise ValueError("RTCP report blocks truncated")
    return [RtcpReceiverInfo.parse(body[p : p + 24]) for p in range(pos, pos + 24 * count, 24)]


def _nack(body: bytes) -> list[int]:
    lost = []
    for pos in range(8, len(body) - 3, 4):
        pid, blp = unpack_from("!HH", body, pos)
        lost.append(pid)
        lost.extend((pid + d + 1) & 0xFFFF for d in range(16) if blp >> d & 1)
    return lost


def round_trip_s(unix_s: float, lsr: int, dlsr: int) -> float:
    """Round-trip time from a report block's LSR/DLSR, received at `unix_s` (RFC 3550
    §6.4.1); 0.0 when it makes no sense (clock steps, a report about an old SR)."""
    now_mid = (ntp_time(unix_s) >> 16) & 0xFFFFFFFF
    rtt = ((now_mid - lsr - dlsr) & 0xFFFFFFFF) / 65536
    return rtt if rtt < 10.0 else 0.0


def parse(data: bytes) -> list[object]:
    """The SR, RR, NACK and payload-specific feedback packets of a compound RTCP
    datagram (others — SDES, BYE, XR, transport-cc, which `twcc` reads — are skipped);
    raises ValueError when malformed. Profile extensions after report blocks are
    ignored (RFC 3550 §6.4.1)."""
    out: list[object] = []
    for count, pt, body in packets(data):
        if pt == SR:
            if len(body) < 24:
                raise ValueError("RTCP sender report too short")
            out.append(
                RtcpSrPacket(
                    ssrc=unpack_from("!L", body)[0],
                    sender_info=RtcpSenderInfo.parse(body[4:24]),
                    reports=_reports(body, 24, count),
                )
            )
        elif pt == RR:
            if len(body) < 4:
                raise ValueError("RTCP receiver report too short")
            out.append(
                RtcpRrPacket(ssrc=unpack_from("!L", body)[0], reports=_reports(body, 4, count))
            )
        elif pt in (RTPFB, PSFB):
            if len(body) < 8:
                raise ValueError("RTCP feedback shorter than its two SSRCs")
            ssrc, media = unpack_from("!LL", body)
            if pt == PSFB:
                out.append(RtcpPsfbPacket(fmt=count, ssrc=ssrc, media_ssrc=media, fci=body[8:]))
            elif count == RTPFB_NACK:
                out.append(
                    RtcpRtpfbPacket(fmt=count, ssrc=ssrc, media_ssrc=media, lost=_nack(body))
                )
    return out


__all__ = [
    "PSFB_FIR",
    "PSFB_PLI",
    "RTPFB_NACK",
    "RtcpPsfbPacket",
    "RtcpReceiverInfo",
    "RtcpRrPacket",
    "RtcpRtpfbPacket",
    "RtcpSrPacket",
    "packets",
    "parse",
    "pli",
    "receiver_report",
    "round_trip_s",
    "sender_report",
]
