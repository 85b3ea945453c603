"""The per-packet side of adaptive quality: TWCC/playout stamping, padding, pausing, SDP."""

from __future__ import annotations

import struct

from tchat.perf.webrtc_peer import viewer_offer
from tchat.sfu.forwarder import DownTrack, Track, TwccSender
from tchat.sfu.rtp import header_extension, payload_bounds
from tchat.sfu.sdp import PLAYOUT_DELAY_URI, TWCC_URI, Codec, LocalParams, negotiate_whep

KEY = bytes([0x65, 0x88])
DELTA = bytes([0x41, 0x9A])
FP = "AA:" * 31 + "AA"
LOCAL = LocalParams("abcd1234", "p" * 32, "BB:" * 31 + "BB", "127.0.0.1", 40000)


def rtp(ssrc: int, seq: int, ts: int, payload: bytes, pt: int = 102, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, ts, ssrc) + payload


def pair(tw: TwccSender, kind: str, ssrc: int) -> tuple[Track, DownTrack, list[bytes]]:
    sent: list[bytes] = []
    track = Track(kind, "video/H264" if kind == "video" else "audio/opus", 90000)
    dt = DownTrack(ssrc, 96, 90000, lambda b: b, sent.append, first_seq=500, first_ts=9)
    dt.enable_twcc(tw, 5)
    track.add(dt, 0.0)
    return track, dt, sent


def test_every_packet_carries_the_viewers_transport_seq_and_playout_delay() -> None:
    tw = TwccSender()
    video, vdt, vsent = pair(tw, "video", 0xAA)
    audio, _, asent = pair(tw, "audio", 0xBB)
    vdt.set_playout_delay(6, 0, 400)
    video.forward(rtp(1, 10, 0, KEY), 1.0)
    audio.forward(rtp(2, 70, 0, b"opus", pt=111), 1.01)
    video.forward(rtp(1, 11, 0, DELTA), 1.02)
    seqs = [int.from_bytes(header_extension(p, 5) or b"", "big") for p in (*vsent, *asent)]
    assert sorted(seqs) == [0, 1, 2]  # one sequence across the viewer's streams
    assert header_extension(vsent[0], 6) == ((0 << 12) | 40).to_bytes(3, "big")
    assert header_extension(asent[0], 6) is None  # audio's playout delay was not set
    start, end = payload_bounds(vsent[1])
    assert vsent[1][start:end] == DELTA
    assert tw.lookup(2) == (1.02, len(vsent[1]))
    assert tw.lookup(3) is None and tw.lookup(2 + 4096) is None


def test_padding_takes_sequence_numbers_and_media_follows_on() -> None:
    tw = TwccSender()
    video, dt, sent = pair(tw, "video", 0xAA)
    video.forward(rtp(1, 10, 0, KEY, marker=True), 1.0)
    assert video.pad(dt, 600, 1.05) >= 600
    video.forward(rtp(1, 11, 0, DELTA), 1.1)
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in sent]
    assert seqs == list(range(500, 500 + len(sent)))  # contiguous, padding included
    pads = sent[1:-1]
    assert pads and all(p[0] & 0x20 and payload_bounds(p)[0] == payload_bounds(p)[1] for p in pads)
    # NACKs for packets on either side of the padding are answered from the cache
    assert video.nack(dt, [500], 1.2) == 1 and sent[-1][12 + 8 :] == KEY
    assert video.nack(dt, [seqs[-1]], 1.2) == 1 and sent[-1][12 + 8 :] == DELTA


def test_effective_layer_is_the_lower_of_user_cap_and_policy_and_pause_stops_video() -> None:
    plis: list[int] = []
    track = Track("video", "video/H264", 90000, ["l", "m", "h"], 3, plis.append)
    for i, rid in enumerate(["l", "m", "h"]):
        body = bytes([(3 << 4) | 0]) + rid.encode() + b"\x00\x00"
        ext = struct.pack("!HH", 0xBEDE, 1) + body
        track.forward(struct.pack("!BBHII", 0x90, 102, 1, 0, 100 + i) + ext + KEY, 0.0)
    sent: list[bytes] = []
    dt = DownTrack(0xAA, 96, 90000, lambda b: b, sent.append, max_layer=1)
    track.add(dt, 0.0)
    assert dt.target == 1
    track.set_abr_layer(dt, 2, 0.1)
    assert dt.target == 1  # the user's cap wins
    track.set_abr_layer(dt, 0, 0.2)
    assert dt.target == 0
    track.set_abr_layer(dt, -1, 0.3)
    assert dt.target == dt.current == -1
    before = len(sent)
    track.forward(struct.pack("!BBHII", 0x80, 102, 2, 0, 100) + KEY, 0.4)
    assert len(sent) == before  # paused: nothing goes out
    track.set_abr_layer(dt, 0, 0.5)
    assert dt.target == 0


def test_whep_answer_negotiates_transport_cc_only_when_offered() -> None:
    sources = {
        "audio": Codec("audio/opus", 111, 48000, 2),
        "video": Codec("video/H264", 102, 90000, None, (("packetization-mode", "1"),)),
    }
    ssrcs = {"audio": 11, "video": 22}
    offer = viewer_offer("viewU", "viewerpasswordviewerpassword", FP, adaptive=True)
    neg = negotiate_whep(offer, LOCAL, sources, ssrcs)
    assert f"a=extmap:5 {TWCC_URI}" in neg.answer
    assert f"a=extmap:6 {PLAYOUT_DELAY_URI}" in neg.answer
    assert "a=rtcp-fb:102 transport-cc" in neg.answer
    assert all(m.twcc_ext == 5 and m.playout_ext == 6 for m in neg.media if m.codec)
    off = negotiate_whep(offer, LOCAL, sources, ssrcs, twcc=False)
    assert TWCC_URI not in off.answer and all(m.twcc_ext == 0 for m in off.media)
    plain = negotiate_whep(
        viewer_offer("viewU", "viewerpasswordviewerpassword", FP), LOCAL, sources, ssrcs
    )
    assert "transport-cc" not in plain.answer
