"""The recorder sink: SDP streams from negotiated codecs, top layer pinned, plain RTP out,
a keyframe request on an unrepaired gap. Loopback UDP only; the clock is a number."""

from __future__ import annotations

import socket
import struct
from types import SimpleNamespace
from typing import Any

import pytest

from tchat.sfu.forwarder import Track
from tchat.sfu.recording_sink import RecorderSink, rtp_stream
from tchat.sfu.sdp import Codec, Media

RID_EXT = 3
KEY = bytes([0x65, 0x88])
DELTA = bytes([0x41, 0x9A])
H264 = Codec("video/H264", 102, 90000, None, (("packetization-mode", "1"),))
OPUS = Codec("audio/opus", 111, 48000, 2, (("minptime", "10"), ("useinbandfec", "1")))


def rtp(ssrc: int, seq: int, ts: int, payload: bytes, rid: str, pt: int = 102) -> bytes:
    body = bytes([(RID_EXT << 4) | (len(rid) - 1)]) + rid.encode()
    body += bytes(-len(body) % 4)
    ext = struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    return struct.pack("!BBHII", 0x90, pt, seq, ts, ssrc) + ext + payload


def test_rtp_stream_from_negotiated_codecs() -> None:
    video = rtp_stream(Media("0", "video", H264), 40000)
    assert video is not None and video.encoding == "H264/90000"
    assert video.payload_type == 102 and video.fmtp == "packetization-mode=1"
    audio = rtp_stream(Media("1", "audio", OPUS), 40002)
    assert audio is not None and audio.encoding == "opus/48000/2"
    assert audio.fmtp == "minptime=10;useinbandfec=1"
    # VP8 cannot be copied into MPEG-TS HLS; a rejected media has no codec
    assert rtp_stream(Media("0", "video", Codec("video/VP8", 96, 90000)), 40000) is None
    assert rtp_stream(Media("0", "video", None), 40000) is None


@pytest.fixture
def receiver() -> Any:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def test_sink_records_the_top_layer_continuously_and_asks_keyframes_on_gaps(
    receiver: socket.socket,
) -> None:
    plis: list[int] = []
    track = Track(
        "video", "video/H264", 90000, rids=["q", "h", "f"], rid_ext=RID_EXT,
        request_keyframe=plis.append,
    )  # fmt: skip
    media = Media("0", "video", H264, rids=["q", "h", "f"], rid_ext=RID_EXT)
    room = SimpleNamespace(name="r", tracks={"video": track})
    peer: Any = SimpleNamespace(media=[media], room=room)
    now = [10.0]
    sink, streams = RecorderSink.attach(peer, lambda: now[0], lambda: receiver.getsockname()[1])
    assert [s.kind for s in streams] == ["video"]
    # the low layer arrives first and is recorded until the top one (f) starts with a
    # keyframe; from then on only f reaches the recorder, numbering continuous
    for seq in range(5):
        payload = KEY if seq == 0 else DELTA
        track.forward(rtp(0x1111, 100 + seq, seq * 3000, payload, "q"), now[0])
        track.forward(rtp(0x3333, 500 + seq, seq * 3000, payload, "f"), now[0])
    got = [receiver.recv(2048) for _ in range(6)]
    receiver.settimeout(0.05)
    with pytest.raises(TimeoutError):
        receiver.recv(2048)  # nothing more: q's later packets are not recorded
    assert all(g[1] & 0x7F == 102 for g in got)  # the negotiated payload type
    assert [g[12:] for g in got] == [KEY, KEY, DELTA, DELTA, DELTA, DELTA]  # plain RTP
    assert len({g[8:12] for g in got}) == 1  # one SSRC for FFmpeg
    seqs = [struct.unpack("!H", g[2:4])[0] for g in got]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(6)]
    assert sink.gaps == 0
    # packet 505 lost upstream: the next one shows a hole → keyframe request for layer f
    plis.clear()
    now[0] += 1.0
    track.forward(rtp(0x3333, 506, 6 * 3000, DELTA, "f"), now[0])
    assert sink.gaps == 1 and plis == [0x3333]
    sink.detach()
    assert track.downtracks == [] and sink.sock is None


def test_sink_without_recordable_media_attaches_nothing() -> None:
    track = Track("video", "video/VP8", 90000)
    media = Media("0", "video", Codec("video/VP8", 96, 90000))
    peer: Any = SimpleNamespace(
        media=[media], room=SimpleNamespace(name="r", tracks={"video": track})
    )
    sink, streams = RecorderSink.attach(peer, lambda: 0.0, lambda: 40000)
    assert streams == [] and track.downtracks == [] and sink.sock is None
