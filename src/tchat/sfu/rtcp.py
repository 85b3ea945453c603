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


def parse(data: bytes) -> list[object]:
    """The packets of a compound RTCP datagram; raises ValueError when malformed."""
    try:
        return list(RtcpPacket.parse(data))
    except ValueError:
        raise
    except Exception as exc:  # struct.error, IndexError on truncated input
        raise ValueError(f"malformed RTCP: {exc}") from None


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
    "sender_report",
]
