"""RTCP we build and read (RFC 3550, 4585), on aiortc's packet classes."""

from __future__ import annotations

from aiortc.rtp import (
    RtcpPacket,
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


def round_trip_s(unix_s: float, lsr: int, dlsr: int) -> float:
    """Round-trip time from a report block's LSR/DLSR, received at `unix_s` (RFC 3550
    §6.4.1); 0.0 when it makes no sense (clock steps, a report about an old SR)."""
    now_mid = (ntp_time(unix_s) >> 16) & 0xFFFFFFFF
    rtt = ((now_mid - lsr - dlsr) & 0xFFFFFFFF) / 65536
    return rtt if rtt < 10.0 else 0.0


def parse(data: bytes) -> list[object]:
    """The packets of a compound RTCP datagram; raises ValueError when malformed.

    Transport-wide CC feedback (RTPFB FMT 15) is left out: aiortc would read its FCI as
    NACK pairs and fail on Chrome's padded feedback, and twcc.find_feedback reads it."""
    out: list[object] = []
    pos = 0
    try:
        while pos + 4 <= len(data):
            end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
            if end > len(data):
                raise ValueError("RTCP packet is truncated")
            if not (data[pos + 1] == 205 and data[pos] & 0x1F == 15):
                out.extend(RtcpPacket.parse(data[pos:end]))
            pos = end
    except ValueError:
        raise
    except Exception as exc:  # struct.error, IndexError on truncated input
        raise ValueError(f"malformed RTCP: {exc}") from None
    if pos != len(data):
        raise ValueError("RTCP packet length is less than 4 bytes")
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
    "parse",
    "pli",
    "receiver_report",
    "round_trip_s",
    "sender_report",
]
