"""WHIP/WHEP negotiation: what the answer says, and clear errors for bad offers."""

from __future__ import annotations

import pytest
from aiortc.sdp import SessionDescription

from tchat.sfu import sdp
from tchat.sfu.sdp import (
    MAX_SDP_BYTES,
    Codec,
    LocalParams,
    SdpError,
    negotiate_whep,
    negotiate_whip,
)

FP = "AA:" * 31 + "AA"
LOCAL = LocalParams("abcd1234", "p" * 32, "BB:" * 31 + "BB", "127.0.0.1", 40000)

WHIP_OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0 1\r\na=ice-ufrag:remU\r\na=ice-pwd:remotepasswordremotepassword\r\n"
    f"a=fingerprint:sha-256 {FP}\r\na=setup:actpass\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n"
    "a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 102 103\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n"
    "a=rtcp-mux\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
    "a=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n"
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
    "a=rtpmap:103 H264/90000\r\n"
    "a=fmtp:103 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n"
    "a=rid:f send\r\na=rid:h send\r\na=rid:q send\r\na=simulcast:send f;h;q\r\n"
)

WHEP_OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=ice-ufrag:viewU\r\na=ice-pwd:viewerpasswordviewerpassword\r\n"
    f"a=fingerprint:sha-256 {FP}\r\na=setup:actpass\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 98 100\r\nc=IN IP4 0.0.0.0\r\na=mid:v\r\na=recvonly\r\n"
    "a=rtcp-mux\r\na=rtpmap:98 VP8/90000\r\na=rtpmap:100 H264/90000\r\n"
    "a=fmtp:100 packetization-mode=1;profile-level-id=42e01f\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 109\r\nc=IN IP4 0.0.0.0\r\na=mid:a\r\na=recvonly\r\n"
    "a=rtcp-mux\r\na=rtpmap:109 opus/48000/2\r\n"
)


def test_whip_answer_is_ice_lite_passive_with_h264_pm1_and_simulcast() -> None:
    neg = negotiate_whip(WHIP_OFFER, LOCAL)
    answer = neg.answer
    assert "a=ice-lite" in answer and "a=setup:passive" in answer
    assert f"a=fingerprint:sha-256 {LOCAL.fingerprint}" in answer
    assert "a=ice-ufrag:abcd1234" in answer and "a=rtcp-mux" in answer
    assert "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host" in answer
    assert "a=group:BUNDLE 0 1" in answer
    assert "a=simulcast:recv f;h;q" in answer and "a=rid:q recv" in answer
    assert "a=rtpmap:102 H264/90000" in answer and "a=rtpmap:96" not in answer
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in answer
    audio, video = neg.media
    assert audio.codec == Codec(
        "audio/opus", 111, 48000, 2, audio.codec.fmtp if audio.codec else ()
    )
    assert video.codec is not None and video.codec.payload_type == 102
    assert video.rids == ["q", "h", "f"] and video.rid_ext == 10
    assert (neg.remote_ufrag, neg.remote_fingerprints) == ("remU", [("sha-256", FP)])
    parsed = SessionDescription.parse(answer)  # aiortc can read what we wrote
    assert [m.direction for m in parsed.media] == ["recvonly", "recvonly"]


@pytest.mark.parametrize(
    ("simulcast", "order"),
    [
        ("f;h;q", ["q", "h", "f"]),
        ("h;m;l", ["l", "m", "h"]),
        ("a;b", ["b", "a"]),
        ("m;h", ["m", "h"]),
    ],
)
def test_rid_layer_order(simulcast: str, order: list[str]) -> None:
    rids = simulcast.split(";")
    offer = WHIP_OFFER.replace("a=rid:f send\r\na=rid:h send\r\na=rid:q send\r\n", "")
    offer = offer.replace(
        "a=simulcast:send f;h;q",
        "".join(f"a=rid:{r} send\r\n" for r in rids) + f"a=simulcast:send {simulcast}",
    )
    neg = negotiate_whip(offer, LOCAL)
    assert neg.media[1].rids == order
    assert f"a=simulcast:recv {simulcast}\r\n" in neg.answer  # the offer's order


def test_whip_prefers_vp8_when_h264_is_only_mode_0() -> None:
    offer = WHIP_OFFER.replace("packetization-mode=1", "packetization-mode=0")
    video = negotiate_whip(offer, LOCAL).media[1]
    assert video.codec is not None and video.codec.mime == "video/VP8"


def test_whep_maps_to_viewer_payload_types_and_our_ssrcs() -> None:
    sources = {"video": Codec("video/H264", 102, 90000), "audio": Codec("audio/opus", 111, 48000)}
    neg = negotiate_whep(WHEP_OFFER, LOCAL, sources, {"video": 1234, "audio": 5678})
    video, audio = neg.media
    assert video.codec is not None and video.codec.payload_type == 100 and video.ssrc == 1234
    assert audio.codec is not None and audio.codec.payload_type == 109 and audio.ssrc == 5678
    assert "a=ssrc:1234 cname:tchat" in neg.answer and "a=sendonly" in neg.answer


def test_whep_section_without_source_is_inactive() -> None:
    neg = negotiate_whep(
        WHEP_OFFER, LOCAL, {"audio": Codec("audio/opus", 111, 48000)}, {"audio": 9}
    )
    assert neg.media[0].codec is None
    assert "a=inactive" in neg.answer and "a=group:BUNDLE a" in neg.answer


@pytest.mark.parametrize(
    ("offer", "reason"),
    [
        ("", "v=0"),
        ("hello", "v=0"),
        ("v=0\r\nm=video x\r\n", "malformed"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no m= section"),
        (WHIP_OFFER.replace("a=ice-ufrag:remU\r\n", ""), "ice-ufrag"),
        (WHIP_OFFER.replace(f"a=fingerprint:sha-256 {FP}\r\n", ""), "fingerprint"),
        (WHIP_OFFER.replace("a=setup:actpass", "a=setup:passive"), "actpass"),
        (WHIP_OFFER.replace("a=mid:1", "a=mid:0"), "duplicate"),
        (WHIP_OFFER.replace("a=sendonly", "a=recvonly"), "sendonly"),
        (WHIP_OFFER.replace("opus/48000/2", "G722/8000"), "Opus"),
        (
            WHIP_OFFER.replace("send f;h;q", "send f;h;q;x").replace(
                "a=rid:f", "a=rid:x send\r\na=rid:f"
            ),
            "at most 3",
        ),
        (WHIP_OFFER.replace("a=rtpmap:111", "a=rtpmap:abc"), "malformed"),
        (WHIP_OFFER + "a=" + "x" * MAX_SDP_BYTES, "larger"),
    ],
)
def test_bad_whip_offers_raise_sdp_error_with_reason(offer: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        negotiate_whip(offer, LOCAL)


def test_whep_rejects_viewer_without_the_room_codec() -> None:
    sources = {"video": Codec("video/AV1", 45, 90000)}
    with pytest.raises(SdpError, match="AV1"):
        negotiate_whep(WHEP_OFFER, LOCAL, sources, {"video": 1})


def test_whip_answers_transport_cc_only_when_offered() -> None:
    plain = negotiate_whip(WHIP_OFFER, LOCAL)
    assert sdp.TWCC_URI not in plain.answer and "transport-cc" not in plain.answer
    assert [m.twcc_ext for m in plain.media] == [0, 0]
    offer = WHIP_OFFER.replace(
        "a=rtcp-mux\r\na=rtpmap:111",
        f"a=rtcp-mux\r\na=extmap:3 {sdp.TWCC_URI}\r\na=rtpmap:111",
    ).replace(
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
        f"a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:3 {sdp.TWCC_URI}\r\n",
    )
    neg = negotiate_whip(offer, LOCAL)
    assert [m.twcc_ext for m in neg.media] == [3, 3]
    assert neg.answer.count(f"a=extmap:3 {sdp.TWCC_URI}") == 2
    assert "a=rtcp-fb:111 transport-cc" in neg.answer
    assert "a=rtcp-fb:102 transport-cc" in neg.answer


def test_whep_answers_rtx_for_the_chosen_codec_when_offered() -> None:
    offer = WHEP_OFFER.replace("98 100\r\n", "98 100 99 101\r\n").replace(
        "a=fmtp:100 packetization-mode=1;profile-level-id=42e01f\r\n",
        "a=fmtp:100 packetization-mode=1;profile-level-id=42e01f\r\n"
        "a=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\n"
        "a=rtpmap:101 rtx/90000\r\na=fmtp:101 apt=100\r\n",
    )
    sources = {"video": Codec("video/H264", 102, 90000), "audio": Codec("audio/opus", 111, 48000)}
    neg = negotiate_whep(
        offer, LOCAL, sources, {"video": 1234, "audio": 5678}, rtx_ssrcs={"video": 4321, "audio": 9}
    )
    video, audio = neg.media
    assert (video.rtx_pt, video.rtx_ssrc) == (101, 4321)  # H.264's RTX, not VP8's
    assert (audio.rtx_pt, audio.rtx_ssrc) == (0, 0)  # no RTX offered for audio
    answer = SessionDescription.parse(neg.answer)
    vsec = next(m for m in answer.media if m.kind == "video")
    assert vsec.fmt == [100, 101]
    assert "a=fmtp:101 apt=100" in neg.answer and "a=rtpmap:101 rtx/90000" in neg.answer
    assert "a=ssrc-group:FID 1234 4321" in neg.answer and "a=ssrc:4321 cname:tchat" in neg.answer
    # an offer without RTX gets none (retransmissions stay on the media SSRC)
    plain = negotiate_whep(
        WHEP_OFFER, LOCAL, sources, {"video": 1, "audio": 2}, rtx_ssrcs={"video": 3}
    )
    assert plain.media[0].rtx_pt == 0 and "rtx" not in plain.answer and "FID" not in plain.answer
