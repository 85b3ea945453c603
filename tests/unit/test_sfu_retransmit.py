"""Probe padding, RTX and NACK answers in the forwarder (pure: lists and numbers).

The Chrome freeze of issue 12: padding sent from the timer between two packets of one
frame left that frame incomplete forever (its numbers were "received"), and the
publisher's own padding, dropped but not renumbered, left holes a viewer NACKs in vain.
NACK floods (issue 14.1) are bounded per viewer, per datagram and per sequence number.
"""

from __future__ import annotations

import struct

from tchat.sfu import rtcp
from tchat.sfu.forwarder import (
    CACHE_SIZE,
    NACK_MAX,
    DownTrack,
    RetransmitBudget,
    Track,
    TwccSender,
)
from tchat.sfu.rtp import payload_bounds

KEY = bytes([0x65, 0x88]) + bytes(100)
DELTA = bytes([0x41, 0x9A]) + bytes(100)
RTX_SSRC, RTX_PT = 0xBBBB, 97


def rtp(seq: int, ts: int, payload: bytes, marker: bool = False, ssrc: int = 1) -> bytes:
    return struct.pack("!BBHII", 0x80, 102 | (0x80 if marker else 0), seq, ts, ssrc) + payload


def padding_only(seq: int, ts: int, ssrc: int = 1) -> bytes:
    return struct.pack("!BBHII", 0xA0, 102, seq, ts, ssrc) + bytes(99) + bytes([100])


def fields(pkt: bytes) -> tuple[int, int, int, int, int, bytes]:
    """(marker, pt, seq, ts, ssrc, payload) of a packet as sent."""
    _b0, mpt, seq, ts, ssrc = struct.unpack_from("!BBHII", pkt)
    start, end = payload_bounds(pkt)
    return mpt >> 7, mpt & 0x7F, seq, ts, ssrc, pkt[start:end]


def viewer(rtx: bool = False, twcc: bool = False) -> tuple[Track, DownTrack, list[bytes]]:
    sent: list[bytes] = []
    track = Track("video", "video/H264", 90000)
    dt = DownTrack(0xAAAA, 96, 90000, lambda b: b, sent.append, first_seq=1000, first_ts=0)
    if twcc:
        dt.enable_twcc(TwccSender(), 5)
    if rtx:
        dt.enable_rtx(RTX_SSRC, RTX_PT, first_seq=7)
    track.add(dt, 0.0)
    track.forward(rtp(10, 3000, KEY, marker=True), 0.0)  # the first packet: out seq 1000
    return track, dt, sent


def media_seqs(sent: list[bytes]) -> list[int]:
    return [fields(p)[2] for p in sent if fields(p)[4] == 0xAAAA]


# -- probe padding ---------------------------------------------------------------------
def test_padding_without_rtx_never_lands_inside_a_frame() -> None:
    track, dt, sent = viewer()
    track.forward(rtp(11, 6000, KEY, marker=True), 0.1)  # a whole frame
    track.forward(rtp(12, 9000, DELTA), 0.13)  # first packet of the next frame
    assert track.pad(dt, 1000, 0.14) == 0 and len(sent) == 3  # mid-frame: nothing
    track.forward(rtp(13, 9000, DELTA, marker=True), 0.14)  # the frame ends
    assert track.pad(dt, 1000, 0.15) >= 1000
    track.forward(rtp(14, 12000, DELTA, marker=True), 0.16)
    seqs = media_seqs(sent)
    assert seqs == list(range(1000, 1000 + len(sent)))  # one contiguous numbering
    pads = [f for f in map(fields, sent) if not f[5]]
    # the padding sits between frames: after a marker, before the next frame's first packet
    first_pad = seqs.index(pads[0][2])
    before = fields(sent[first_pad - 1])
    assert before[0] == 1 and pads[0][3] == before[3]  # after a marker, with its timestamp
    # after padding the next padding may follow at once (still between frames)
    assert track.frame_done(dt)


def test_rtx_padding_goes_on_the_rtx_stream_even_mid_frame() -> None:
    track, dt, sent = viewer(rtx=True, twcc=True)
    track.forward(rtp(11, 6000, DELTA), 0.1)  # a frame begins
    assert track.pad(dt, 600, 0.11) >= 600
    track.forward(rtp(12, 6000, DELTA, marker=True), 0.12)
    media = [fields(p) for p in sent if fields(p)[4] == 0xAAAA]
    rtx = [fields(p) for p in sent if fields(p)[4] == RTX_SSRC]
    assert [f[2] for f in media] == [1000, 1001, 1002]  # the media numbering never sees them
    assert rtx and all(f[1] == RTX_PT and not f[5] for f in rtx)
    assert [f[2] for f in rtx] == list(range(7, 7 + len(rtx)))
    assert all(p[0] & 0x20 for p in sent if fields(p)[4] == RTX_SSRC)


# -- the publisher's padding ---------------------------------------------------------------
def test_publisher_padding_is_not_forwarded_and_leaves_no_hole() -> None:
    track, dt, sent = viewer()
    track.forward(rtp(11, 6000, DELTA, marker=True), 0.1)
    for seq in (12, 13, 14):  # Chrome's probe: padding-only packets between frames
        assert track.forward(padding_only(seq, 6000), 0.11) == 0
    track.forward(rtp(15, 9000, DELTA), 0.13)
    track.forward(rtp(16, 9000, DELTA, marker=True), 0.13)
    assert media_seqs(sent) == [1000, 1001, 1002, 1003]
    # NACKs on either side of the closed gap map back to the right packets
    assert track.nack(dt, [1001, 1002, 1003], 0.2) == 3
    assert [fields(p)[3] for p in sent[-3:]] == [3000, 6000, 6000]
    assert [fields(p)[0] for p in sent[-3:]] == [1, 0, 1]
    # the padding counts as received in our receiver reports (not as loss to the sender)
    layer = track.layers[0]
    assert layer is not None and layer.report(1.0)[1] == 0


def test_a_late_or_repeated_publisher_padding_does_not_move_the_numbering() -> None:
    track, _dt, sent = viewer()
    track.forward(rtp(11, 6000, DELTA, marker=True), 0.1)
    track.forward(padding_only(5, 6000), 0.11)  # older than what was forwarded
    track.forward(padding_only(11, 6000), 0.11)  # a repeat of a forwarded number
    track.forward(rtp(12, 9000, DELTA, marker=True), 0.12)
    assert media_seqs(sent) == [1000, 1001, 1002]


def test_nacks_are_answered_across_hundreds_of_padding_bursts() -> None:
    # a probe without RTX pads every 20 ms: 2 segments each time, for seconds
    track, dt, sent = viewer()
    payloads = {}
    for i in range(1, 200):  # 4 s of a probe, 400 segments
        frame = DELTA[:2] + i.to_bytes(2, "big")
        track.forward(rtp(10 + i, 3000 * i, frame, marker=True), i / 100)
        payloads[media_seqs(sent[-1:])[0]] = frame
        assert track.pad(dt, 300, i / 100 + 0.005) > 0
    assert len(dt.history) > 300
    for out_seq in (min(payloads), sorted(payloads)[100], max(payloads)):
        assert track.nack(dt, [out_seq], 10.0) == 1
        assert fields(sent[-1])[5] == payloads[out_seq]


def test_a_nack_for_lost_padding_is_answered_with_padding() -> None:
    # without RTX the padding holds media numbers: a lost one is a hole in the viewer's
    # frame continuity until it arrives (or the next keyframe), so it is resent
    track, dt, sent = viewer()
    assert track.pad(dt, 300, 0.01) > 0
    pad = fields(sent[1])
    track.forward(rtp(11, 6000, DELTA, marker=True), 0.03)
    assert track.nack(dt, [pad[2]], 0.1) == 1
    marker, pt, seq, ts, _, body = fields(sent[-1])
    assert (marker, pt, seq, ts, body) == (0, 96, pad[2], pad[3], b"")
    assert sent[-1][0] & 0x20 and len(sent[-1]) == 13


# -- NACK answers --------------------------------------------------------------------------
def test_nack_answered_as_rtx_with_the_original_sequence_number() -> None:
    track, dt, sent = viewer(rtx=True)
    track.forward(rtp(11, 6000, DELTA, marker=True), 0.1)
    assert track.nack(dt, [1001], 0.2) == 1
    marker, pt, seq, ts, ssrc, body = fields(sent[-1])
    assert (marker, pt, seq, ssrc) == (1, RTX_PT, 7, RTX_SSRC)
    assert ts == fields(sent[1])[3]
    assert body == (1001).to_bytes(2, "big") + DELTA
    assert dt.rtx_octets == len(sent[-1]) and dt.nack_stats.answered == 1


def test_nack_for_a_packet_of_the_previous_layer_is_answered_from_its_cache() -> None:
    plis: list[int] = []
    track = Track("video", "video/H264", 90000, ["l", "h"], 0, plis.append)
    sent: list[bytes] = []
    dt = DownTrack(0xAAAA, 96, 90000, lambda b: b, sent.append, first_seq=1000)
    low, high = 0, 1
    key_high = KEY[:2] + b"high"
    dt.max_layer = low
    track.add(dt, 0.0)
    track.forward(rtp(50, 0, KEY, marker=True, ssrc=20), 0.0, index_hint=low)
    track.forward(rtp(900, 3000, key_high, marker=True, ssrc=30), 0.04, index_hint=high)
    track.set_max_layer(dt, high, 0.05)
    track.forward(rtp(901, 6000, key_high, marker=True, ssrc=30), 0.06, index_hint=high)
    assert media_seqs(sent) == [1000, 1001]
    assert track.nack(dt, [1000, 1001], 0.1) == 2
    assert fields(sent[-2])[5] == KEY and fields(sent[-1])[5] == key_high


def test_each_sequence_number_is_resent_at_most_once_per_round_trip() -> None:
    track, dt, _sent = viewer()
    dt.rtt_s = 0.1
    assert track.nack(dt, [1000, 1000, 1000], 1.0) == 1
    assert track.nack(dt, [1000], 1.05) == 0  # the answer is still on its way
    assert track.nack(dt, [1000], 1.11) == 1  # a round trip later: lost again, resend
    assert dt.nack_stats.repeated == 3


def test_skipped_repeats_do_not_spend_the_budget() -> None:
    track, dt, _ = viewer()
    budget = RetransmitBudget(ratio=1.0, floor_bps=8 * 300)  # room for two answers
    assert track.nack(dt, [1000] * 50, 1.0, budget) == 1
    track.forward(rtp(11, 6000, DELTA, marker=True), 1.0)
    assert track.nack(dt, [1001], 1.0, budget) == 1


def test_one_datagram_resends_at_most_its_limit() -> None:
    track, dt, _sent = viewer()
    for i in range(1, 200):
        track.forward(rtp(10 + i, 3000 * i, DELTA, marker=True), 0.001 * i)
    lost = list(range(1000, 1200))
    assert track.nack(dt, lost, 1.0) == NACK_MAX
    assert dt.nack_stats.over_limit == len(lost) - NACK_MAX
    assert track.nack(dt, list(range(1100, 1200)), 1.0, limit=10) == 10


def test_budget_bounds_a_nack_flood_to_the_delivered_rate() -> None:
    track, dt, _sent = viewer()
    for i in range(1, CACHE_SIZE):
        track.forward(rtp(10 + i, 3000 * i, DELTA, marker=True), 0.0)
    budget = RetransmitBudget(ratio=1.0)
    budget.set_rate(400_000)  # 50 kB/s delivered
    resent = 0
    t = 10.0
    for _ in range(300):  # 3 s of a flood: every cached packet NACKed every 10 ms
        t += 0.01
        for start in range(1000, 1000 + CACHE_SIZE - 64, 64):
            resent += track.nack(dt, list(range(start, start + 64)), t, budget)
    octets = resent * (12 + len(DELTA))
    assert octets <= 3 * 50_000 + 1000  # ≤ the delivered rate over the 3 s
    assert octets >= 2 * 50_000  # and the budget is actually used
    assert dt.nack_stats.over_budget > 0


def test_retransmit_budget_is_a_sliding_second() -> None:
    budget = RetransmitBudget(ratio=1.0, floor_bps=8_000)  # 1000 B per second
    assert budget.limit == 1000
    assert budget.allow(600, 5.00) and budget.allow(400, 5.50)
    assert not budget.allow(1, 5.95)  # 1000 B within the last second
    assert budget.allow(600, 6.01)  # the 5.0 slot has left the window
    assert not budget.allow(500, 6.10)
    assert budget.allow(400, 6.51)
    budget.set_rate(80_000)
    assert budget.limit == 10_000 and budget.allow(5_000, 6.6)
    budget.set_rate(0)  # a viewer with nothing delivered keeps the floor
    assert budget.limit == 1000
    assert budget.allow(1000, 100.0)  # a long idle gap empties the window


def test_nacks_still_map_after_the_sequence_numbers_wrap() -> None:
    track, dt, sent = viewer()
    seq = 11
    for i in range(70_000):
        track.forward(rtp(seq & 0xFFFF, 3000 * i, DELTA, marker=True), i / 1000)
        seq += 1
        if i % 1000 == 0:
            track.tick(i / 1000)  # once a second in the worker
    last = media_seqs(sent[-1:])[0]
    sent.clear()
    assert track.nack(dt, [last - 5 & 0xFFFF], 100.0) == 1
    assert fields(sent[-1])[3] == fields(sent[-1])[3] and fields(sent[-1])[2] == last - 5 & 0xFFFF
    assert track.nack(dt, [last + 5 & 0xFFFF], 100.0) == 0  # not sent yet


# -- RTCP ------------------------------------------------------------------------------------
def test_rtcp_parse_skips_padded_transport_cc_feedback_and_keeps_the_nack() -> None:
    fci = bytes(13)  # any TWCC body; padded to a word boundary as Chrome does
    body = struct.pack("!II", 1, 2) + fci + bytes([0, 0, 3])
    twcc = struct.pack("!BBH", 0xA0 | 15, 205, len(body) // 4) + body
    nack = struct.pack("!BBHIIHH", 0x81, 205, 3, 1, 0xAAAA, 1000, 0b101)
    packets = rtcp.parse(twcc + nack)
    assert len(packets) == 1 and isinstance(packets[0], rtcp.RtcpRtpfbPacket)
    assert packets[0].lost == [1000, 1001, 1003]


def test_round_trip_from_lsr_and_dlsr() -> None:
    sent_at = 1_700_000_000.25
    lsr = (rtcp.ntp_time(sent_at) >> 16) & 0xFFFFFFFF
    rtt = rtcp.round_trip_s(sent_at + 0.5, lsr, int(0.45 * 65536))
    assert abs(rtt - 0.05) < 0.001
    assert rtcp.round_trip_s(sent_at, lsr, int(0.45 * 65536)) == 0.0  # before it was sent


def test_publisher_padding_reaches_relay_edges_as_a_stub_that_closes_their_gap() -> None:
    origin = Track("video", "video/H264", 90000)
    relayed: list[tuple[int, bytes]] = []
    origin.relays.append(lambda index, data: relayed.append((index, data)))
    edge, _, sent = viewer()  # the edge's track and one of its viewers (got seq 10)
    origin.forward(rtp(10, 3000, KEY, marker=True), 0.0)
    for pkt in (padding_only(11, 3000), rtp(12, 6000, DELTA, marker=True)):
        origin.forward(pkt, 0.1)
        index, data = relayed[-1]
        assert index == 0
        edge.forward(data, 0.1, index_hint=index)
    stub = relayed[1][1]
    assert len(stub) == 13 and payload_bounds(stub) == (12, 12)
    assert media_seqs(sent) == [1000, 1001]  # the edge's viewer sees no hole
