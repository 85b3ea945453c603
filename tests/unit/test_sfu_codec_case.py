"""Encoding names are case-insensitive (RFC 4855 §3): a publisher writing OPUS or h264,
as GStreamer and others do, negotiates, forwards and records like one writing opus/H264."""

from __future__ import annotations

from tchat.recording.live import rtp_stream
from tchat.sfu import sdp
from tchat.sfu.cluster.wire import media_from_json, media_to_json
from tchat.sfu.rtp import h264_keyframe_start, keyframe_detector

FP = "AA:" * 31 + "AA"
LOCAL = sdp.LocalParams("abcd1234", "p" * 32, "BB:" * 31 + "BB", "127.0.0.1", 40000)


def offer(audio: str, video: str, fmtp: str, direction: str = "sendonly") -> str:
    return (
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "a=group:BUNDLE 0 1\r\na=ice-ufrag:remU\r\na=ice-pwd:remotepasswordremotepassword\r\n"
        f"a=fingerprint:sha-256 {FP}\r\na=setup:actpass\r\n"
        f"m=audio 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na={direction}\r\n"
        f"a=rtcp-mux\r\na=rtpmap:96 {audio}\r\n"
        f"m=video 9 UDP/TLS/RTP/SAVPF 97\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na={direction}\r\n"
        f"a=rtcp-mux\r\na=rtpmap:97 {video}\r\na=fmtp:97 {fmtp}\r\n"
    )


# GStreamer webrtcbin's spelling, then lower- and mixed-case ones
GSTREAMER = offer("OPUS/48000/2", "H264/90000", "packetization-mode=1;profile-level-id=42c01f")
LOWER = offer("opus/48000/2", "h264/90000", "packetization-mode=1")
MIXED = offer("Opus/48000/2", "h264/90000", "Packetization-Mode=1;profile-level-id=42e01f")


def test_whip_accepts_every_spelling_and_keeps_one() -> None:
    for text in (GSTREAMER, LOWER, MIXED):
        neg = sdp.negotiate_whip(text, LOCAL)
        mimes = {m.kind: m.codec.mime for m in neg.media if m.codec}
        assert mimes == {"audio": "audio/opus", "video": "video/H264"}
        assert "a=recvonly" in neg.answer and "a=inactive" not in neg.answer


def test_whep_viewer_spelling_need_not_match_the_publisher() -> None:
    pub = sdp.negotiate_whip(GSTREAMER, LOCAL)
    sources = {m.kind: m.codec for m in pub.media if m.codec}
    for text in (LOWER, MIXED, GSTREAMER):
        view = sdp.negotiate_whep(
            text.replace("sendonly", "recvonly"), LOCAL, sources, {"audio": 5, "video": 7}
        )
        assert [m.codec is not None for m in view.media] == [True, True]


def test_recording_and_keyframes_take_any_spelling() -> None:
    pub = sdp.negotiate_whip(GSTREAMER, LOCAL)
    streams = [rtp_stream(m, 40000 + 2 * i) for i, m in enumerate(pub.media)]
    assert [s.encoding for s in streams if s] == ["opus/48000/2", "H264/90000"]
    # a codec spelled otherwise (e.g. relayed from an older instance) is still recorded
    upper = sdp.Media("0", "audio", sdp.Codec("audio/OPUS", 111, 48000, 2))
    stream = rtp_stream(upper, 40010)
    assert stream is not None and stream.encoding == "opus/48000/2"
    assert keyframe_detector("VIDEO/h264") is h264_keyframe_start


def test_relay_carries_the_canonical_name() -> None:
    upper = [sdp.Media("0", "video", sdp.Codec("video/h264", 97, 90000))]
    (back,) = media_from_json(media_to_json(upper))
    assert back.codec is not None and back.codec.mime == "video/H264"
