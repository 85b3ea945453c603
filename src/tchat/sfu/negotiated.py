"""What SDP negotiation (sfu/sdp.py) yields: the codecs, media sections and ICE/DTLS
parameters of a session, and the extension URIs and limits it works with. Plain data,
no parsing."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_SDP_BYTES = 64 * 1024
UDP_PRIORITY = 2130706431  # host candidates; TCP's lower, so it is used when UDP fails
TCP_PRIORITY = 1518280447
MAX_RIDS = 3
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
# Encoding names are case-insensitive (RFC 4855 §3; GStreamer writes OPUS, some write
# h264): codecs are compared in lower case and kept under one spelling from here on.
CANONICAL_MIME = {"audio/opus": "audio/opus", "video/h264": "video/H264", "video/vp8": "video/VP8"}


class SdpError(ValueError):
    """The offer is malformed or cannot be answered; the message says why (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class LocalParams:
    ufrag: str
    pwd: str
    fingerprint: str  # sha-256, "AB:CD:…"
    ip: str
    port: int
    tcp_port: int = 0  # a passive TCP candidate too (ICE-TCP) when set

    def candidates(self) -> list[tuple[str, str, int, int, str | None]]:
        """Our host candidates (foundation, protocol, port, priority, tcptype): UDP, and
        a passive TCP one (RFC 6544) with a lower priority when ICE-TCP is on."""
        out: list[tuple[str, str, int, int, str | None]] = [
            ("1", "udp", self.port, UDP_PRIORITY, None)
        ]
        if self.tcp_port:
            out.append(("2", "tcp", self.tcp_port, TCP_PRIORITY, "passive"))
        return out


@dataclass(frozen=True, slots=True)
class Codec:
    mime: str  # "video/H264"
    payload_type: int
    clock_rate: int
    channels: int | None = None
    fmtp: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Media:
    mid: str
    kind: str  # audio | video
    codec: Codec | None  # None: rejected (inactive)
    rids: list[str] = field(default_factory=list)  # lowest layer first
    rids_offered: list[str] = field(default_factory=list)  # as the offer lists them
    mid_ext: int = 0
    rid_ext: int = 0
    ssrc: int = 0  # WHEP: the SSRC we send with
    twcc_ext: int = 0  # transport-wide CC extension id (0: not negotiated)
    playout_ext: int = 0  # WHEP: playout-delay extension id (0: not negotiated)
    rtx_pt: int = 0  # WHEP: RTX payload type for the codec (0: not negotiated)
    rtx_ssrc: int = 0  # WHEP: the SSRC we send RTX with


@dataclass(slots=True)
class Negotiated:
    answer: str
    remote_ufrag: str
    remote_pwd: str
    remote_fingerprints: list[tuple[str, str]]
    media: list[Media]


def canonical_mime(mime: str) -> str:
    """One spelling per codec ("OPUS" and "opus" → "audio/opus"); others lower-cased."""
    lower = mime.lower()
    return CANONICAL_MIME.get(lower, lower)
