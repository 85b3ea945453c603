"""The recorder sink: SDP streams and FFmpeg codecs from negotiated codecs, the layer
plan (start on what flows, change only at a boundary), plain RTP out, audio aligned
with the video's start, a keyframe request on an unrepaired gap. Loopback UDP only;
the clock is a number."""

from __future__ import annotations

import itertools
import socket
import struct
from types import SimpleNamespace
from typing import Any

import pytest

from tchat.recording.live import VP8_TO_H264, LayerPlan, RecorderSink, codec_args, rtp_stream
from tchat.sfu.forwarder import Track
from tchat.sfu.sdp import Codec, Media

RID_EXT = 3
KEY = bytes([0x65, 0x88])
DELTA = bytes([0x41, 0x9A])
H264 = Codec("video/H264", 102, 90000, None, (("packetization-mode", "1"),))
OPUS = Codec("audio/opus", 111, 48000, 2, (("minptime", "10"), ("useinbandfec", "1")))
VP8 = Codec("video/VP8", 96, 90000)


def rtp(ssrc: int, seq: int, ts: int, payload: bytes, rid: str = "", pt: int = 102) -> bytes:
    """One whole frame: the marker bit set."""
    pt |= 0x80
    if not rid:
        return struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + payload
    body = bytes([(RID_EXT << 4) | (len(rid) - 1)]) + rid.encode()
    body += bytes(-len(body) % 4)
    ext = struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    return struct.pack("!BBHII", 0x90, pt, seq, ts, ssrc) + ext + payload


def test_rtp_stream_and_codecs_from_negotiated_codecs() -> None:
    video = rtp_stream(Media("0", "video", H264), 40000)
    assert video is not None and video.encoding == "H264/90000"
    assert video.payload_type == 102 and video.fmtp == "packetization-mode=1"
    audio = rtp_stream(Media("1", "audio", OPUS), 40002)
    assert audio is not None and audio.encoding == "opus/48000/2"
    assert audio.fmtp == "minptime=10;useinbandfec=1"
    # codec names are case-insensitive (RFC 4855)
    upper = rtp_stream(Media("1", "audio", Codec("audio/OPUS", 111, 48000, 2)), 40002)
    assert upper is not None and upper.encoding == "opus/48000/2"
    # H.264 is copied, Opus becomes AAC; VP8 is recorded too, transcoded to H.264
    assert codec_args([video, audio]) == ["-c:v", "copy", "-c:a", "aac", "-b:a", "128k"]
    vp8 = rtp_stream(Media("0", "video", VP8), 40000)
    assert vp8 is not None and vp8.encoding == "VP8/90000"
    args = codec_args([vp8, audio])
    assert args[: len(VP8_TO_H264)] == VP8_TO_H264 and "libx264" in args
    # a rejected media has no codec
    assert rtp_stream(Media("0", "video", None), 40000) is None


def test_layer_plan_starts_on_what_flows_and_changes_only_when_asked() -> None:
    plan = LayerPlan(steady_s=2.0, start_steady_s=1.0)
    plan.tick([], 0.0)
    assert plan.start(0.0) is None  # nothing flows yet
    plan.tick([0, 1], 0.5)  # the top layer (2) is not there: limited by bandwidth
    assert plan.start(0.5) == 1  # nothing steady yet: the best that flows
    plan.tick([0, 1, 2], 1.0)
    assert plan.pending is None and plan.at_boundary() is None  # 2 flows, not steadily yet
    plan.tick([0, 1, 2], 2.9)
    assert plan.pending is None
    plan.tick([0, 1, 2], 3.0)  # 2 s of the top layer: move at the next boundary
    assert plan.pending == 2 and plan.current == 1
    assert plan.at_boundary() == 2 and plan.current == 2
    assert plan.at_boundary() is None  # once
    # the top layer stops (the uplink dropped it): down at the next boundary, to the best
    plan.tick([0, 1], 10.0)
    assert plan.pending == 1
    plan.tick([0, 1, 2], 10.5)  # it flickers back: still down, it is not steady
    assert plan.pending == 1
    plan.tick([0, 1, 2], 12.5)  # back for 2 s: stay after all
    assert plan.pending is None and plan.at_boundary() is None
    plan.tick([0], 20.0)
    assert plan.at_boundary() == 0
    plan.tick([], 30.0)  # nothing flows at all: nothing to move to
    assert plan.at_boundary() is None and plan.current == 0


def test_layer_plan_starts_on_a_steady_layer_rather_than_one_that_just_appeared() -> None:
    plan = LayerPlan(start_steady_s=1.0)
    plan.tick([0], 0.0)
    plan.tick([0, 1, 2], 1.2)  # h and f only just started (a 400 kbit/s uplink probes them)
    assert plan.start(1.2) == 0


def test_layer_plan_prefers_layers_up_to_its_cap() -> None:
    """A transcoded (VP8) recording is 640×360: decoding the top layer is CPU for nothing."""
    plan = LayerPlan(steady_s=1.0, max_layer=1)
    plan.tick([0, 1, 2], 0.0)
    assert plan.start(0.0) == 1
    plan.tick([0, 1, 2], 5.0)
    assert plan.pending is None  # never up to 2
    plan.tick([2], 6.0)  # only the top layer flows: better than nothing
    assert plan.at_boundary() == 2


@pytest.fixture
def receiver() -> Any:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[bytes]:
    out = []
    sock.settimeout(0.05)
    while True:
        try:
            out.append(sock.recv(2048))
        except TimeoutError:
            return out


def test_sink_starts_on_the_best_flowing_layer_and_switches_only_at_a_boundary(
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
    seq = {"q": 100, "h": 300, "f": 500}

    def send(rid: str, payload: bytes) -> None:
        ssrc = {"q": 0x1111, "h": 0x2222, "f": 0x3333}[rid]
        track.forward(rtp(ssrc, seq[rid], seq[rid] * 3000, payload, rid), now[0])
        seq[rid] += 1

    # before FFmpeg listens nothing goes out, whatever flows
    send("q", KEY)
    send("h", KEY)
    assert received(receiver) == [] and sink.media_started is None
    sink.enable(now[0])  # FFmpeg listens: the best layer flowing is h (f is not there)
    assert plis[-1] == 0x2222
    send("q", DELTA)
    send("h", DELTA)  # not a keyframe: still waiting
    assert received(receiver) == []
    send("h", KEY)
    send("q", KEY)
    send("h", DELTA)
    got = received(receiver)
    assert [g[12:] for g in got] == [KEY, DELTA]  # h only, from its keyframe
    assert sink.media_started is not None and [r for _, r in sink.layers] == ["h"]
    # f starts; it is steady after 2 s, but the recording moves only at a boundary
    for _ in range(3):
        now[0] += 1.0
        send("f", KEY if _ == 0 else DELTA)
        send("h", DELTA)
        sink.tick(now[0])
    assert sink.plan.pending == 2
    middle = received(receiver)
    assert len(middle) == 3  # still h
    plis.clear()
    sink.request_keyframe(now[0])  # the recorder's segment boundary
    assert plis == [0x3333]
    send("h", DELTA)  # the old layer stops at the boundary ...
    send("f", DELTA)  # ... and the new one waits for its keyframe
    assert received(receiver) == []
    send("f", KEY)
    send("h", DELTA)
    send("f", DELTA)
    got2 = received(receiver)
    assert [g[12:] for g in got2] == [KEY, DELTA]
    assert [r for _, r in sink.layers] == ["h", "f"]
    all_seqs = [struct.unpack("!H", g[2:4])[0] for g in got + middle + got2]
    assert len({g[8:12] for g in got + middle + got2}) == 1  # one SSRC for FFmpeg
    # numbering continuous across the switch (FFmpeg sees no loss)
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(all_seqs))
    # an upstream hole on f → a keyframe request for f (not a layer change)
    plis.clear()
    now[0] += 1.0  # past the per-layer PLI limit
    seq["f"] += 1
    send("f", DELTA)
    assert sink.gaps == 1 and plis == [0x3333]
    # … and nothing of f goes to FFmpeg until that keyframe: no frame with a hole in it
    send("f", DELTA)
    assert received(receiver) == []
    send("f", KEY)
    after = received(receiver)
    assert [g[12:] for g in after] == [KEY]
    assert (struct.unpack("!H", after[0][2:4])[0] - all_seqs[-1]) & 0xFFFF == 1  # no hole
    # padding-only packets (the publisher's bandwidth probes) are not forwarded: their
    # numbers are taken out, so FFmpeg sees no hole and no keyframe is asked for
    plis.clear()
    now[0] += 1.0
    send("f", DELTA)
    for _ in range(4):
        track.forward(padding(0x3333, seq["f"], "f"), now[0])
        seq["f"] += 1
    send("f", DELTA)
    around = [struct.unpack("!H", g[2:4])[0] for g in received(receiver)]
    assert len(around) == 2 and (around[1] - around[0]) & 0xFFFF == 1
    assert sink.gaps == 1 and plis == []
    sink.detach()
    assert track.downtracks == [] and sink.sock is None


def padding(ssrc: int, seq: int, rid: str) -> bytes:
    pkt = rtp(ssrc, seq, 0, bytes(199) + bytes([200]), rid)
    return bytes([pkt[0] | 0x20]) + pkt[1:]


def test_audio_starts_with_the_video(receiver: socket.socket) -> None:
    video = Track("video", "video/H264", 90000, request_keyframe=lambda ssrc: None)
    audio = Track("audio", "audio/opus", 48000)
    room = SimpleNamespace(name="r", tracks={"video": video, "audio": audio})
    peer: Any = SimpleNamespace(media=[Media("0", "video", H264), Media("1", "audio", OPUS)],
                                room=room)  # fmt: skip
    now = [0.0]
    port = receiver.getsockname()[1]
    sink, streams = RecorderSink.attach(peer, lambda: now[0], lambda: port)
    assert [s.kind for s in streams] == ["video", "audio"]
    video.forward(rtp(0x10, 1, 0, DELTA), now[0])
    sink.enable(now[0])
    for i in range(5):  # audio flows while the video waits for its keyframe: held back
        audio.forward(rtp(0x20, 10 + i, i * 960, b"opus", pt=111), now[0])
    assert received(receiver) == []
    video.forward(rtp(0x10, 2, 3000, KEY), now[0])
    audio.forward(rtp(0x20, 15, 5 * 960, b"opus", pt=111), now[0])
    got = received(receiver)
    assert [g[12:] for g in got] == [KEY, b"opus"]  # together, the video first
    # a publish whose video never starts: the audio goes alone after a while
    sink.restart(now[0])
    sink.enable(now[0])
    audio.forward(rtp(0x20, 16, 6 * 960, b"opus", pt=111), now[0])
    assert received(receiver) == []
    now[0] += 3.0
    sink.tick(now[0])
    audio.forward(rtp(0x20, 17, 7 * 960, b"opus", pt=111), now[0])
    assert [g[12:] for g in received(receiver)] == [b"opus"]
    sink.detach()


def test_sink_without_recordable_media_attaches_nothing() -> None:
    track = Track("video", "video/AV1", 90000)
    media = Media("0", "video", Codec("video/AV1", 45, 90000))
    peer: Any = SimpleNamespace(
        media=[media, Media("1", "audio", None)],
        room=SimpleNamespace(name="r", tracks={"video": track}),
    )
    sink, streams = RecorderSink.attach(peer, lambda: 0.0, lambda: 40000)
    assert streams == [] and track.downtracks == [] and sink.sock is None


def test_stream_time_is_ffmpegs_timeline(receiver: socket.socket) -> None:
    """The recorder times its boundary keyframe requests by what FFmpeg has received:
    the video's RTP time since the first packet sent, running on with the clock in a gap
    (a queue on the publisher's uplink makes wall time a poor guess of it)."""
    video = Track("video", "video/H264", 90000, request_keyframe=lambda ssrc: None)
    room = SimpleNamespace(name="r", tracks={"video": video})
    peer: Any = SimpleNamespace(media=[Media("0", "video", H264)], room=room)
    now = [100.0]
    port = receiver.getsockname()[1]
    sink, _ = RecorderSink.attach(peer, lambda: now[0], lambda: port)
    video.forward(rtp(0x10, 1, 4_000_000_000, KEY), now[0])
    assert sink.stream_time(now[0]) == 0.0  # nothing sent yet: FFmpeg's time has not begun
    sink.enable(now[0])
    video.forward(rtp(0x10, 2, 4_294_960_000, KEY), now[0])  # near the 32-bit wrap
    assert sink.stream_time(now[0]) == 0.0
    now[0] += 3.0  # arrived late (a queue): FFmpeg's time is the RTP time, not the clock
    video.forward(rtp(0x10, 3, (4_294_960_000 + 90_000) & 0xFFFFFFFF, DELTA), now[0])
    assert sink.stream_time(now[0]) == pytest.approx(1.0)
    assert sink.stream_time(now[0] + 0.05) == pytest.approx(1.0)
    assert sink.stream_time(now[0] + 2.1) == pytest.approx(3.0)  # a gap: runs on
    sink.detach()


def frame_packets(seq: int, ts: int, payloads: list[bytes], marker: bool = True) -> list[bytes]:
    last = len(payloads) - 1
    return [
        struct.pack("!BBHII", 0x80, 102 | (0x80 if marker and i == last else 0), seq + i, ts, 7) + p
        for i, p in enumerate(payloads)
    ]


def seqs(packets: list[bytearray]) -> list[int]:
    return [struct.unpack("!H", p[2:4])[0] for p in packets]


def test_frame_gate_sends_whole_frames_and_nothing_broken() -> None:
    """Issue 12's 400 kbit/s uplink: a frame missing a packet went into the HLS and
    Chrome's decoder stopped the replay there. Whole frames only; after a loss, nothing
    until a keyframe; FFmpeg's numbering stays continuous."""
    from tchat.recording.live import FrameGate
    from tchat.sfu.rtp import h264_keyframe_start

    gate = FrameGate(h264_keyframe_start)
    key = frame_packets(10, 0, [KEY, b"\x1c\x05a", b"\x1c\x45b"])
    out = [gate.push(p) for p in key]
    assert [len(o) for o, _ in out] == [0, 0, 3] and not any(lost for _, lost in out)
    # a delta frame loses its middle packet: none of it, nor the next delta, goes out
    broken = frame_packets(13, 3000, [DELTA, b"\x1c\x01x", b"\x1c\x41y"])
    assert gate.push(broken[0]) == ([], False)
    assert gate.push(broken[2]) == ([], True)
    assert gate.push(frame_packets(16, 6000, [DELTA])[0]) == ([], False)
    sent, lost = gate.push(frame_packets(17, 9000, [KEY])[0])
    assert not lost and seqs(sent) == [13]  # right after the last frame sent (10, 11, 12)
    assert gate.push(bytes(frame_packets(17, 9000, [KEY])[0])) == ([], False)  # repeated
    # a frame cut by a layer switch (its end never comes; the new layer's keyframe does)
    cut = frame_packets(18, 12000, [DELTA, b"\x1c\x01x"], marker=False)
    assert gate.push(cut[0]) == ([], False) and gate.push(cut[1]) == ([], False)
    sent, lost = gate.push(frame_packets(20, 15000, [KEY])[0])
    assert not lost and seqs(sent) == [14]


def test_frame_gate_passes_a_sender_that_sets_no_markers() -> None:
    from tchat.recording.live import FrameGate
    from tchat.sfu.rtp import h264_keyframe_start

    gate = FrameGate(h264_keyframe_start)
    a = frame_packets(1, 0, [KEY, b"\x1c\x45b"], marker=False)
    b = frame_packets(3, 3000, [DELTA], marker=False)
    assert gate.push(a[0])[0] == [] and gate.push(a[1])[0] == []
    sent, lost = gate.push(b[0])  # the next timestamp ends the frame
    assert seqs(sent) == [1, 2] and not lost


def test_a_starting_layer_that_gives_no_whole_keyframe_is_left_for_a_lower_one(
    receiver: socket.socket,
) -> None:
    """Issue 12 (a 1 Mbit/s uplink): the recording started on `f`, whose keyframes never
    arrived whole; with no video in FFmpeg no segment boundary came to move at, and the
    recording failed with no media. Before any video went out, the sink moves down."""
    plis: list[int] = []
    track = Track(
        "video", "video/H264", 90000, rids=["q", "h", "f"], rid_ext=RID_EXT,
        request_keyframe=plis.append,
    )  # fmt: skip
    media = Media("0", "video", H264, rids=["q", "h", "f"], rid_ext=RID_EXT)
    peer: Any = SimpleNamespace(
        media=[media], room=SimpleNamespace(name="r", tracks={"video": track})
    )
    now = [10.0]
    sink, _ = RecorderSink.attach(peer, lambda: now[0], lambda: receiver.getsockname()[1])
    seq = {"h": 300, "f": 500}

    def send(rid: str, payload: bytes, ts: int = 0, end: bool = True) -> None:
        ssrc = {"h": 0x2222, "f": 0x3333}[rid]
        pkt = bytearray(rtp(ssrc, seq[rid], ts or seq[rid] * 3000, payload, rid))
        if not end:
            pkt[1] &= 0x7F  # not the frame's last packet
        track.forward(bytes(pkt), now[0])
        seq[rid] += 1

    send("h", DELTA)
    send("f", DELTA)
    sink.tick(now[0])
    sink.enable(now[0])
    sink.tick(now[0])
    assert sink.plan.current == 2  # f flows: the recording starts there
    for _ in range(4):  # f's keyframe loses a packet every time; h flows on
        now[0] += 1.0
        ts = seq["f"] * 3000
        send("f", KEY, ts, end=False)
        seq["f"] += 1  # its middle packet is lost
        send("f", b"\x1c\x45b", ts)
        send("h", DELTA)
        sink.tick(now[0])
    assert received(receiver) == []
    assert sink.plan.current == 1 and plis[-1] == 0x2222  # moved down, asked h for a keyframe
    send("h", KEY)
    assert [g[12:] for g in received(receiver)] == [KEY]
