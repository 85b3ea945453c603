"""RTP helpers the forwarder needs per packet: header fields, rid, keyframes (RFC 3550/8285).

Kept to `struct` and slicing: aiortc's `RtpPacket.parse` copies the payload and
decodes every extension, which the hot path cannot afford.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct

KeyframeTest = Callable[[bytes], bool]

HEADER = Struct("!BBHII")  # V/P/X/CC, M/PT, seq, ts, ssrc

# RFC 7983 demultiplexing ranges of the first byte.
STUN_MAX = 3
DTLS_MIN, DTLS_MAX = 20, 63
RTP_MIN, RTP_MAX = 128, 191
# The largest RTP packet the SFU forwards: all a publisher can send in one UDP datagram
# within a 1,500-byte Ethernet MTU (less 20 bytes IPv4 + 8 UDP). Larger ones (possible
# on loopback or jumbo frames) could not reach viewers unfragmented: counted, dropped.
RTP_LIMIT = 1472


class RtpError(ValueError):
    """A malformed RTP packet (the sender's fault)."""


def is_rtcp(data: bytes) -> bool:
    """RTCP packet types 192-223 occupy the second byte under rtcp-mux (RFC 5761)."""
    return len(data) > 1 and 192 <= data[1] <= 223


def payload_bounds(data: bytes) -> tuple[int, int]:
    """(start, end) of the payload; raises RtpError on a truncated header."""
    n = len(data)
    if n < 12:
        raise RtpError("RTP packet shorter than 12 bytes")
    b0 = data[0]
    start = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if n < start + 4:
            raise RtpError("RTP header extension truncated")
        start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
    end = n
    if b0 & 0x20:
        end -= data[-1]
    if start > end:
        raise RtpError("RTP header or padding longer than the packet")
    return start, end


def header_extension(data: bytes, ext_id: int) -> bytes | None:
    """The value of one-byte or two-byte header extension `ext_id` (RFC 8285), or None."""
    b0 = data[0]
    if not b0 & 0x10 or ext_id <= 0:
        return None
    pos = 12 + 4 * (b0 & 0x0F)
    if len(data) < pos + 4:
        return None
    profile = (data[pos] << 8) | data[pos + 1]
    end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    pos += 4
    if end > len(data):
        return None
    if profile == 0xBEDE:
        while pos < end:
            byte = data[pos]
            if byte == 0:  # padding
                pos += 1
                continue
            eid, length = byte >> 4, (byte & 0x0F) + 1
            if eid == 15:
                return None
            if eid == ext_id:
                return data[pos + 1 : pos + 1 + length]
            pos += 1 + length
    elif profile & 0xFFF0 == 0x1000:
        while pos + 1 < end:
            eid, length = data[pos], data[pos + 1]
            if eid == 0:
                pos += 1
                continue
            if eid == ext_id:
                return data[pos + 2 : pos + 2 + length]
            pos += 2 + length
    return None


def h264_keyframe_start(payload: bytes) -> bool:
    """True if the payload starts an H.264 IDR access unit (SPS, or IDR start) (RFC 6184)."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: look at the aggregated NAL units
        pos = 1
        while pos + 2 < len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            if (payload[pos + 2] & 0x1F) in (5, 7):
                return True
            pos += 2 + size
        return False
    if nal == 28 and len(payload) > 1:  # FU-A start of an IDR slice
        return bool(payload[1] & 0x80) and (payload[1] & 0x1F) == 5
    return False


def vp8_keyframe_start(payload: bytes) -> bool:
    """True if the payload starts a VP8 key frame (RFC 7741 descriptor, then P bit = 0)."""
    if not payload:
        return False
    b = payload[0]
    if not b & 0x10 or b & 0x07:  # S bit set and partition 0
        return False
    pos = 1
    if b & 0x80:  # X: extended control bits
        if len(payload) < 2:
            return False
        x = payload[1]
        pos = 2
        if x & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= pos:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K
            pos += 1
    return len(payload) > pos and not payload[pos] & 0x01


def keyframe_detector(mime: str) -> KeyframeTest:
    mime = mime.lower()
    if mime == "video/h264":
        return h264_keyframe_start
    if mime == "video/vp8":
        return vp8_keyframe_start
    return _always


def _always(payload: bytes) -> bool:
    return True
