"""SDP negotiation for WHIP (publisher offers, we receive) and WHEP (viewer offers, we send).

Offers are parsed with `aiortc.sdp`; what it does not model (rid, simulcast) is read
from the raw lines. Answers always say: ice-lite, our ufrag/pwd, one host candidate,
our sha-256 fingerprint, `setup:passive` (we are the DTLS server), rtcp-mux, BUNDLE.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiortc.rtcdtlstransport import RTCDtlsFingerprint, RTCDtlsParameters
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceParameters
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
)
from aiortc.sdp import (
    GroupDescription,
    MediaDescription,
    SessionDescription,
    SsrcDescription,
    grouplines,
)

from tchat.sfu.negotiated import (
    CANONICAL_MIME,
    MAX_RIDS,
    MAX_SDP_BYTES,
    MID_URI,
    PLAYOUT_DELAY_URI,
    RID_URI,
    TWCC_URI,
    Codec,
    LocalParams,
    Media,
    Negotiated,
    SdpError,
    canonical_mime,
)

__all__ = [
    "CANONICAL_MIME",
    "MAX_RIDS",
    "MAX_SDP_BYTES",
    "MID_URI",
    "PLAYOUT_DELAY_URI",
    "RID_URI",
    "TWCC_URI",
    "Codec",
    "LocalParams",
    "Media",
    "Negotiated",
    "SdpError",
    "canonical_mime",
    "negotiate_whep",
    "negotiate_whip",
]
# Layer order when rid names follow a known scheme (q/h/f: quarter, half, full;
# l/m/h: low, mid, high); otherwise the simulcast line lists the highest first.
_RID_SCHEMES = [{"q": 0, "h": 1, "f": 2}, {"l": 0, "m": 1, "h": 2}, {"low": 0, "mid": 1, "high": 2}]


def _parse(offer: str) -> tuple[SessionDescription, list[list[str]]]:
    if len(offer.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise SdpError(f"SDP offer larger than {MAX_SDP_BYTES} bytes")
    if not offer.lstrip().startswith("v=0"):
        raise SdpError("SDP offer must start with v=0")
    try:
        session = SessionDescription.parse(offer)
        _, media_lines = grouplines(offer)
    except Exception as exc:  # aiortc raises assert/Value/Key/StopIteration on bad input
        raise SdpError(f"malformed SDP offer: {type(exc).__name__} {exc}".strip()) from None
    if not session.media:
        raise SdpError("SDP offer has no m= section")
    return session, media_lines


def _remote_ice_dtls(session: SessionDescription) -> tuple[str, str, list[tuple[str, str]]]:
    first = session.media[0]
    if first.ice is None or not first.ice.usernameFragment or not first.ice.password:
        raise SdpError("SDP offer lacks a=ice-ufrag / a=ice-pwd")
    if first.dtls is None or not first.dtls.fingerprints:
        raise SdpError("SDP offer lacks a=fingerprint / a=setup")
    if first.dtls.role == "server":
        raise SdpError("SDP offer must use a=setup:actpass or active (we are DTLS server)")
    fps = [(f.algorithm.lower(), f.value.upper()) for f in first.dtls.fingerprints]
    if not any(alg == "sha-256" for alg, _ in fps):
        raise SdpError("SDP offer needs a sha-256 fingerprint")
    return first.ice.usernameFragment, first.ice.password, fps


def _rids(lines: list[str]) -> tuple[list[str], list[str]]:
    """Send rids of a media section: (lowest layer first, as offered); ≤ MAX_RIDS."""
    declared: list[str] = []
    order: list[str] = []
    for line in lines:
        if line.startswith("a=rid:"):
            parts = line[6:].split()
            if len(parts) >= 2 and parts[1] == "send":
                declared.append(parts[0])
        elif line.startswith("a=simulcast:"):
            parts = line[12:].split()
            if len(parts) >= 2 and parts[0] == "send":
                order = [alt.split(",")[0].lstrip("~") for alt in parts[1].split(";")]
    rids = [r for r in order if r in declared] or declared
    if len(rids) > MAX_RIDS:
        raise SdpError(f"at most {MAX_RIDS} simulcast layers, offer has {len(rids)}")
    for rid in rids:
        if not rid.isalnum() or len(rid) > 16:
            raise SdpError(f"bad rid {rid!r}")
    for scheme in _RID_SCHEMES:
        if all(r.lower() in scheme for r in rids):
            return sorted(rids, key=lambda r: scheme[r.lower()]), rids
    return list(reversed(rids)), rids  # simulcast lines list the highest layer first


def _fmtp_param(params: Mapping[str, object], name: str, default: str) -> str:
    """A format parameter by name, ignoring case (media type parameters are
    case-insensitive, RFC 4855 §3)."""
    for key, value in params.items():
        if key.lower() == name:
            return str(value)
    return default


def _codec(params: RTCRtpCodecParameters) -> Codec:
    return Codec(
        mime=canonical_mime(params.mimeType),
        payload_type=int(params.payloadType or 0),
        clock_rate=params.clockRate,
        channels=params.channels,
        fmtp=tuple((k, str(v)) for k, v in params.parameters.items()),
    )


def _pick(media: MediaDescription, want: str | None = None) -> RTCRtpCodecParameters | None:
    """Our codec preference: Opus; H.264 packetization-mode 1, then VP8 (or exactly `want`)."""
    prefs = ["audio/opus"] if media.kind == "audio" else ["video/h264", "video/vp8"]
    if want is not None:
        prefs = [want.lower()]
    for mime in prefs:
        for c in media.rtp.codecs:
            if c.mimeType.lower() != mime:
                continue
            if mime == "video/h264" and _fmtp_param(c.parameters, "packetization-mode", "0") != "1":
                continue
            return c
    return None


def _answer_media(
    offered: MediaDescription,
    local: LocalParams,
    codec: RTCRtpCodecParameters | None,
    direction: str,
) -> MediaDescription:
    m = MediaDescription(offered.kind, local.port, "UDP/TLS/RTP/SAVPF", [])
    m.host = local.ip
    m.rtp.muxId = offered.rtp.muxId
    m.rtcp_port, m.rtcp_host, m.rtcp_mux = local.port, local.ip, True
    m.ice = RTCIceParameters(usernameFragment=local.ufrag, password=local.pwd, iceLite=True)
    m.ice_candidates = [
        RTCIceCandidate(
            component=1, foundation=f, ip=local.ip, port=port, priority=prio, protocol=proto,
            type="host", tcpType=tcp_type,
        )
        for f, proto, port, prio, tcp_type in local.candidates()
    ]  # fmt: skip
    m.ice_candidates_complete = True
    m.dtls = RTCDtlsParameters(
        fingerprints=[RTCDtlsFingerprint(algorithm="sha-256", value=local.fingerprint)],
        role="server",
    )
    if codec is None:
        m.fmt = [offered.fmt[0]] if offered.fmt else [0]
        m.direction = "inactive"
        return m
    fb = [RTCRtcpFeedback(type="nack"), RTCRtcpFeedback(type="nack", parameter="pli")]
    if offered.kind == "video":
        fb.append(RTCRtcpFeedback(type="ccm", parameter="fir"))
    m.rtp.codecs = [
        RTCRtpCodecParameters(
            mimeType=codec.mimeType,
            clockRate=codec.clockRate,
            channels=codec.channels,
            payloadType=codec.payloadType,
            rtcpFeedback=fb if offered.kind == "video" else [],
            parameters=dict(codec.parameters),
        )
    ]
    m.fmt = [codec.payloadType]
    m.direction = direction
    return m


def _session(media: list[MediaDescription], local: LocalParams) -> SessionDescription:
    s = SessionDescription()
    s.origin = f"- {abs(hash(local.ufrag)) % 10**12} 2 IN IP4 {local.ip}"
    s.name = "tchat"
    mids = [m.rtp.muxId for m in media if m.rtp.muxId and m.direction != "inactive"]
    s.group = [GroupDescription(semantic="BUNDLE", items=list(mids))]
    s.msid_semantic = [GroupDescription(semantic="WMS", items=["*"])]
    s.media = media
    return s


def _check_mids(session: SessionDescription) -> None:
    seen: set[str] = set()
    for m in session.media:
        if m.kind in ("audio", "video"):
            if not m.rtp.muxId:
                raise SdpError(f"{m.kind} m= section lacks a=mid")
            if m.rtp.muxId in seen:
                raise SdpError(f"duplicate a=mid:{m.rtp.muxId}")
            seen.add(m.rtp.muxId)
        else:
            raise SdpError(f"unsupported m={m.kind} section (audio and video only)")


def negotiate_whip(offer: str, local: LocalParams) -> Negotiated:
    """Answer a publisher's offer: we receive Opus and H.264/VP8 (≤ 3 simulcast rids)."""
    session, raw = _parse(offer)
    ufrag, pwd, fps = _remote_ice_dtls(session)
    _check_mids(session)
    kinds = [m.kind for m in session.media]
    if kinds.count("audio") > 1 or kinds.count("video") > 1:
        raise SdpError("a WHIP offer carries at most one audio and one video section")
    out: list[Media] = []
    answer: list[MediaDescription] = []
    for m, lines in zip(session.media, raw, strict=True):
        if m.direction not in (None, "sendonly", "sendrecv"):
            raise SdpError(f"WHIP {m.kind} section must be sendonly, not {m.direction}")
        chosen = _pick(m)
        if chosen is None:
            want = "Opus" if m.kind == "audio" else "H.264 (packetization-mode=1) or VP8"
            raise SdpError(f"WHIP {m.kind} section offers no {want}")
        rids, offered = _rids(lines) if m.kind == "video" else ([], [])
        exts = {e.uri: e.id for e in m.rtp.headerExtensions}
        if rids and RID_URI not in exts:
            raise SdpError("simulcast offer lacks the rtp-stream-id header extension")
        am = _answer_media(m, local, chosen, "recvonly")
        am.rtp.headerExtensions = [
            RTCRtpHeaderExtensionParameters(id=exts[uri], uri=uri)
            for uri in (MID_URI, RID_URI, TWCC_URI)
            if uri in exts and (uri != RID_URI or rids)
        ]
        if TWCC_URI in exts:
            # our transport-cc feedback lets the browser's bandwidth estimate ramp up
            # (on RR loss alone it enables its top simulcast layer only after ~30 s)
            am.rtp.codecs[0].rtcpFeedback.append(RTCRtcpFeedback(type="transport-cc"))
        answer.append(am)
        out.append(
            Media(
                mid=str(m.rtp.muxId),
                kind=m.kind,
                codec=_codec(chosen),
                rids=rids,
                rids_offered=offered,
                mid_ext=exts.get(MID_URI, 0),
                rid_ext=exts.get(RID_URI, 0) if rids else 0,
                twcc_ext=exts.get(TWCC_URI, 0),
            )
        )
    text = str(_session(answer, local))
    for media, am_text in zip(out, answer, strict=True):
        if media.rids:
            # aiortc does not print rid/simulcast: add them to that section
            section = str(am_text)
            # same order as the offer: browsers read it as their encodings' order
            extra = "".join(f"a=rid:{r} recv\r\n" for r in media.rids_offered)
            extra += "a=simulcast:recv " + ";".join(media.rids_offered) + "\r\n"
            text = text.replace(section, section + extra, 1)
    return Negotiated(text, ufrag, pwd, fps, out)


def _rtx_for(media: MediaDescription, pt: int) -> int:
    """The payload type of the offer's RTX codec for payload type `pt` (0: none)."""
    for c in media.rtp.codecs:
        if c.mimeType.lower().endswith("/rtx") and str(c.parameters.get("apt")) == str(pt):
            return int(c.payloadType or 0)
    return 0


def _whep_extensions(
    m: MediaDescription, am: MediaDescription, chosen: RTCRtpCodecParameters | None, twcc: bool
) -> tuple[int, int]:
    """Transport-wide CC (and playout delay, only beside it) answered where offered: their
    extension ids, 0 for none."""
    exts = {e.uri: e.id for e in m.rtp.headerExtensions} if twcc and chosen else {}
    twcc_id = int(exts.get(TWCC_URI) or 0)
    playout_id = int(exts.get(PLAYOUT_DELAY_URI) or 0) if twcc_id else 0
    if not 0 < twcc_id < 15 or not 0 <= playout_id < 15:
        return 0, 0  # we write one-byte extensions only
    if twcc_id:
        am.rtp.headerExtensions = [RTCRtpHeaderExtensionParameters(id=twcc_id, uri=TWCC_URI)]
        if playout_id:
            am.rtp.headerExtensions.append(
                RTCRtpHeaderExtensionParameters(id=playout_id, uri=PLAYOUT_DELAY_URI)
            )
        am.rtp.codecs[0].rtcpFeedback.append(RTCRtcpFeedback(type="transport-cc"))
    return twcc_id, playout_id


def _whep_streams(
    m: MediaDescription,
    am: MediaDescription,
    chosen: RTCRtpCodecParameters,
    ssrc: int,
    rtx_ssrc: int,
) -> tuple[int, int]:
    """Our media SSRC in the answer and, where the offer has RTX for the chosen codec,
    the RTX codec and SSRC (FID group): (RTX payload type, RTX SSRC), (0, 0) without."""
    am.ssrc = [SsrcDescription(ssrc=ssrc, cname="tchat", msid=f"tchat {m.kind}")]
    am.msid = f"tchat {m.kind}"
    rtx_pt = _rtx_for(m, int(chosen.payloadType or 0)) if rtx_ssrc else 0
    if not rtx_pt:
        return 0, 0
    am.rtp.codecs.append(
        RTCRtpCodecParameters(
            mimeType=f"{m.kind}/rtx",
            clockRate=chosen.clockRate,
            payloadType=rtx_pt,
            parameters={"apt": int(chosen.payloadType or 0)},
        )
    )
    am.fmt.append(rtx_pt)
    am.ssrc_group = [GroupDescription(semantic="FID", items=[ssrc, rtx_ssrc])]
    am.ssrc.append(SsrcDescription(ssrc=rtx_ssrc, cname="tchat", msid=f"tchat {m.kind}"))
    return rtx_pt, rtx_ssrc


def negotiate_whep(
    offer: str,
    local: LocalParams,
    sources: dict[str, Codec],
    ssrcs: dict[str, int],
    twcc: bool = True,
    rtx_ssrcs: dict[str, int] | None = None,
) -> Negotiated:
    """Answer a viewer's offer: we send the room's codec per kind, under our SSRCs.

    With `twcc`, a viewer that offers the transport-wide CC extension (as Chrome does)
    gets it and `a=rtcp-fb:<pt> transport-cc` back (its feedback drives the adaptive
    layer choice), and the playout-delay extension (its latency tier) if offered.
    A video section whose offer has RTX for the chosen codec (RFC 4588, `apt=`) gets
    it back with an `a=ssrc-group:FID` of our media and RTX SSRCs (`rtx_ssrcs`):
    NACK answers and probe padding then travel on the RTX stream."""
    session, _ = _parse(offer)
    ufrag, pwd, fps = _remote_ice_dtls(session)
    _check_mids(session)
    out: list[Media] = []
    answer: list[MediaDescription] = []
    taken: set[str] = set()
    for m in session.media:
        if m.direction not in (None, "recvonly", "sendrecv"):
            raise SdpError(f"WHEP {m.kind} section must be recvonly, not {m.direction}")
        source = sources.get(m.kind)
        chosen = None
        if source is not None and m.kind not in taken:
            chosen = _pick(m, source.mime)
            if chosen is None:
                raise SdpError(f"viewer offers no {source.mime} for its {m.kind} section")
            taken.add(m.kind)
        am = _answer_media(m, local, chosen, "sendonly")
        twcc_id, playout_id = _whep_extensions(m, am, chosen, twcc)
        rtx_pt = rtx_ssrc = 0
        if chosen is not None:
            rtx_pt, rtx_ssrc = _whep_streams(
                m, am, chosen, ssrcs[m.kind], (rtx_ssrcs or {}).get(m.kind, 0)
            )
        answer.append(am)
        out.append(
            Media(
                mid=str(m.rtp.muxId),
                kind=m.kind,
                codec=_codec(chosen) if chosen else None,
                ssrc=ssrcs.get(m.kind, 0) if chosen else 0,
                twcc_ext=twcc_id,
                playout_ext=playout_id,
                rtx_pt=rtx_pt,
                rtx_ssrc=rtx_ssrc,
            )
        )
    if not taken:
        raise SdpError("viewer offer has no section the room sends")
    return Negotiated(str(_session(answer, local)), ufrag, pwd, fps, out)
