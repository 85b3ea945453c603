"""The SDP the recorder hands FFmpeg for RTP input (what the SFU's sink will feed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tchat.recording.source import RtpStream, SdpSource, render_sdp

H264 = RtpStream("video", 40000, 102, "H264/90000", "packetization-mode=1;profile-level-id=42e01f")
OPUS = RtpStream("audio", 40002, 111, "opus/48000/2")


def test_render_sdp_video_and_audio() -> None:
    sdp = render_sdp([H264, OPUS])
    assert sdp.endswith("\r\n")
    lines = sdp.split("\r\n")
    assert lines[:5] == [
        "v=0",
        "o=- 0 0 IN IP4 127.0.0.1",
        "s=tchat recording",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
    ]
    assert lines[5:10] == [
        "m=video 40000 RTP/AVP 102",
        "a=rtpmap:102 H264/90000",
        "a=fmtp:102 packetization-mode=1;profile-level-id=42e01f",
        "m=audio 40002 RTP/AVP 111",
        "a=rtpmap:111 opus/48000/2",
    ]


@pytest.mark.parametrize(
    ("streams", "needle"),
    [
        ([], "at least one"),
        ([RtpStream("data", 40000, 96, "x/1")], "video or audio"),
        ([RtpStream("video", 40001, 96, "H264/90000")], "even"),
        ([H264, RtpStream("audio", 40000, 111, "opus/48000/2")], "overlaps"),
        ([RtpStream("video", 40000, 34, "H263/90000")], "dynamic"),
    ],
)
def test_bad_descriptions(streams: list[RtpStream], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        render_sdp(streams)


def test_sdp_source_writes_file_and_forwards_keyframe_requests(tmp_path: Path) -> None:
    asked: list[int] = []
    source = SdpSource(tmp_path / "run" / "input.sdp", [H264], keyframe=lambda: asked.append(1))
    assert (tmp_path / "run" / "input.sdp").read_bytes() == render_sdp([H264]).encode()
    args = source.input_args()
    assert args[-2:] == ["-i", str(tmp_path / "run" / "input.sdp")]
    assert args[args.index("-listen_timeout") + 1] == "2"
    source.request_keyframe()
    assert asked == [1]
