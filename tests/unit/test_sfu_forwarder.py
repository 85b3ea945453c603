"""The forwarder's rewrite, layer switching, NACK and PLI logic, driven without sockets."""

from __future__ import annotations

import struct

import pytest

from tchat.sfu.forwarder import PLI_INTERVAL_S, DownTrack, Track
from tchat.sfu.rtp import RtpError

RID_EXT = 3
KEY = bytes([0x65, 0x88])  # H.264 IDR slice NAL
DELTA = bytes([0x41, 0x9A])  # H.264 non-IDR slice NAL


def rtp(ssrc: int, seq: int, ts: int, payload: bytes, rid: str = "", pt: int = 102) -> bytes:
    ext = b""
    b0 = 0x80
    if rid:
        body = bytes([(RID_EXT << 4) | (len(rid) - 1)]) + rid.encode()
        body += bytes(-len(body) % 4)
        ext = struct.pack("!HH", 0xBEDE, len(body) // 4) + body
        b0 |= 0x10
    return struct.pack("!BBHII", b0, pt, seq, ts, ssrc) + ext + payload


class Viewer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def downtrack(self, max_layer: int = 2, first_seq: int = 1000) -> DownTrack:
        return DownTrack(
            ssrc=0xAAAA,
            pt=96,
            clock_rate=90000,
            protect=lambda b: b,
            send=self.sent.append,
            max_layer=max_layer,
            first_seq=first_seq,
            first_ts=5000,
        )

    def fields(self) -> list[tuple[int, int, int, int, bytes]]:
        """(pt, seq, ts, ssrc, payload) of each packet sent."""
        out = []
        for p in self.sent:
            _, m_pt, seq, ts, ssrc = struct.unpack_from("!BBHII", p)
            out.append((m_pt & 0x7F, seq, ts, ssrc, p[12:]))
        return out


def simulcast_track(plis: list[int]) -> Track:
    return Track("video", "video/H264", 90000, ["l", "m", "h"], RID_EXT, plis.append)


def test_rewrites_ssrc_pt_seq_ts_and_strips_extensions() -> None:
    plis: list[int] = []
    track = simulcast_track(plis)
    viewer = Viewer()
    track.forward(rtp(11, 7, 900, KEY, "h"), now=0.0)
    dt = viewer.downtrack()
    track.add(dt, now=0.0)
    assert plis == [11]  # joining asks the publisher for a keyframe
    track.forward(rtp(11, 8, 900, DELTA, "h"), now=0.0)
    assert viewer.sent == []  # not a keyframe: the viewer waits
    track.forward(rtp(11, 9, 3900, KEY, "h"), now=0.1)
    track.forward(rtp(11, 10, 3900, DELTA, "h"), now=0.1)
    got = viewer.fields()
    assert [(pt, seq, ts, ssrc) for pt, seq, ts, ssrc, _ in got] == [
        (96, 1000, 5000, 0xAAAA),
        (96, 1001, 5000, 0xAAAA),
    ]
    assert [p for *_, p in got] == [KEY, DELTA]


def test_layer_switch_keeps_sequence_continuous_and_starts_on_keyframe() -> None:
    plis: list[int] = []
    track = simulcast_track(plis)
    viewer = Viewer()
    dt = viewer.downtrack(max_layer=0)
    # both layers live, the viewer is capped to the low one
    track.forward(rtp(1, 100, 0, KEY, "l"), now=0.0)
    track.forward(rtp(3, 5000, 777, KEY, "h"), now=0.0)
    track.add(dt, now=0.0)
    t = 0.0
    for i in range(1, 5):
        t += 1 / 30
        track.forward(rtp(1, 100 + i, 3000 * i, KEY if i == 1 else DELTA, "l"), now=t)
        track.forward(rtp(3, 5000 + i, 777 + 3000 * i, DELTA, "h"), now=t)
    before = len(viewer.sent)
    plis.clear()
    track.set_max_layer(dt, 2, now=t)
    assert plis == [3]  # keyframe wanted on the new target layer
    # high layer deltas are not forwarded before its keyframe; low keeps flowing
    t += 1 / 30
    track.forward(rtp(3, 5005, 777 + 15000, DELTA, "h"), now=t)
    track.forward(rtp(1, 105, 15000, DELTA, "l"), now=t)
    t += 1 / 30
    track.forward(rtp(3, 5006, 777 + 18000, KEY, "h"), now=t)
    track.forward(rtp(1, 106, 18000, DELTA, "l"), now=t)  # old layer: dropped now
    track.forward(rtp(3, 5007, 777 + 18000, DELTA, "h"), now=t)
    got = viewer.fields()
    seqs = [seq for _, seq, *_ in got]
    assert seqs == list(range(1000, 1000 + len(got)))
    assert got[before + 1][4] == KEY and dt.current == 2
    assert dt.switches == 2
    ts_after = [ts for _, _, ts, *_ in got[before + 1 :]]
    assert ts_after[0] > got[before][2]  # time moves forward across the switch
    assert ts_after[0] == ts_after[1]  # one frame keeps one timestamp


def test_falls_back_when_target_layer_goes_silent() -> None:
    track = simulcast_track([])
    viewer = Viewer()
    dt = viewer.downtrack()
    track.forward(rtp(3, 1, 0, KEY, "h"), now=0.0)
    track.add(dt, now=0.0)
    assert dt.target == 2
    # the high layer went silent; a new low layer appears and is switched to at once
    track.forward(rtp(1, 1, 0, KEY, "l"), now=2.0)
    assert dt.target == 0 and dt.current == 0
    track.tick(now=2.1)
    track.forward(rtp(1, 2, 3000, DELTA, "l"), now=2.1)
    assert [seq for _, seq, *_ in viewer.fields()] == [1000, 1001]


def test_nack_answered_from_cache_with_same_rewrite() -> None:
    track = Track("video", "video/VP8", 90000)
    viewer = Viewer()
    vp8_key = bytes([0x10, 0x00])
    track.forward(rtp(9, 40, 0, vp8_key, pt=96), now=0.0)
    dt = viewer.downtrack()
    track.add(dt, now=0.0)
    for i in range(5):
        track.forward(rtp(9, 41 + i, 3000, vp8_key if i == 0 else b"\x00\x01", pt=96), now=0.1)
    first = list(viewer.sent)
    assert track.nack(dt, [1001, 1003, 1500, 999]) == 2  # 1500 not sent yet, 999 never
    assert viewer.sent[-2:] == [first[1], first[3]]


def test_pli_rate_limited_per_layer() -> None:
    plis: list[int] = []
    track = Track("video", "video/H264", 90000, request_keyframe=plis.append)
    track.forward(rtp(5, 1, 0, DELTA), now=0.0)
    viewers = [Viewer().downtrack() for _ in range(10)]
    for dt in viewers:
        track.add(dt, now=0.01)
    assert plis == [5]
    track.keyframe_wanted(viewers[0], now=0.02 + PLI_INTERVAL_S)
    assert plis == [5, 5]


def test_audio_starts_at_once_and_unknown_or_padding_packets_are_dropped() -> None:
    track = Track("audio", "audio/opus", 48000)
    viewer = Viewer()
    track.forward(rtp(7, 1, 960, b"\xf8\xff\xfe", pt=111), now=0.0)
    track.add(viewer.downtrack(), now=0.0)
    assert track.forward(rtp(7, 2, 1920, b"\xf8\xff\xfe", pt=111), now=0.02) == 1
    padding_only = bytearray(rtp(7, 3, 1920, b"\x00\x00\x00\x04", pt=111))
    padding_only[0] |= 0x20
    assert track.forward(bytes(padding_only), now=0.04) == 0
    sim = simulcast_track([])
    assert sim.forward(rtp(8, 1, 0, KEY), now=0.0) == 0  # no rid: layer unknown
    assert sim.forward(rtp(8, 1, 0, KEY, "zz"), now=0.0) == 0
    assert sim.dropped == 2


def test_sequence_wraps_around() -> None:
    track = Track("audio", "audio/opus", 48000)
    viewer = Viewer()
    track.forward(rtp(7, 65534, 0, b"x", pt=111), now=0.0)
    track.add(viewer.downtrack(first_seq=65535), now=0.0)
    for seq in (65535, 0, 1):
        track.forward(rtp(7, seq, 0, b"x", pt=111), now=0.0)
    assert [seq for _, seq, *_ in viewer.fields()] == [65535, 0, 1]


def test_layer_report_counts_loss_and_wraps() -> None:
    track = Track("audio", "audio/opus", 48000)
    for seq in (65530, 65531, 65533, 65534, 65535, 0, 1):  # 65532 lost, wraps to 0
        track.forward(rtp(7, seq, 0, b"x", pt=111), now=0.0)
    layer = track.layers[0]
    assert layer is not None
    layer.sr_ntp_mid, layer.sr_arrival = 0x12345678, 0.5
    fraction, lost, highest, lsr, dlsr = layer.report(now=1.0)
    assert (lost, highest, lsr, dlsr) == (1, 65537, 0x12345678, 32768)
    assert fraction == 256 // 8  # 8 expected (65530..1), 7 received
    for seq in (2, 3, 4, 6):  # 5 lost
        track.forward(rtp(7, seq, 0, b"x", pt=111), now=1.5)
    fraction, lost, highest, *_ = layer.report(now=2.0)
    assert (lost, highest, fraction) == (2, 65542, 256 // 5)


def test_new_ssrc_for_a_layer_rebases_viewers_on_its_keyframe() -> None:
    plis: list[int] = []
    track = Track("video", "video/H264", 90000, request_keyframe=plis.append)
    viewer = Viewer()
    track.forward(rtp(5, 100, 1000, KEY), now=0.0)
    track.add(viewer.downtrack(), now=0.0)
    track.forward(rtp(5, 101, 4000, KEY), now=0.1)
    track.forward(rtp(5, 102, 4000, DELTA), now=0.1)
    # the publisher restarts with a new SSRC and unrelated numbering
    track.forward(rtp(6, 9000, 777, DELTA), now=0.2)  # not a keyframe: wait
    track.forward(rtp(6, 9001, 3777, KEY), now=0.3)
    got = viewer.fields()
    assert [seq for _, seq, *_ in got] == [1000, 1001, 1002]
    assert got[2][2] > got[1][2]  # timestamp moves on
    assert plis[-1] == 6  # a keyframe was asked of the new stream


def test_truncated_packet_raises_rtp_error() -> None:
    track = Track("audio", "audio/opus", 48000)
    with pytest.raises(RtpError):
        track.forward(b"\x80\x6f\x00\x01", now=0.0)
