"""Transport-wide CC feedback: build ↔ parse, the chunk kinds Chrome sends, bad input."""

from __future__ import annotations

import struct

import pytest

from tchat.sfu import twcc
from tchat.sfu.rtcp import receiver_report


def test_build_then_parse_round_trips_arrivals_losses_and_large_deltas() -> None:
    arrivals: list[float | None] = [10.0, 10.001, None, None, 10.0032, 10.2, 10.19, None]
    packet = twcc.build(0x11, 0x22, 65534, 7, arrivals)
    assert len(packet) % 4 == 0 and packet[1] == twcc.RTPFB and packet[0] & 0x1F == 15
    (fb,) = twcc.find_feedback(packet)
    assert (fb.sender_ssrc, fb.media_ssrc, fb.base_seq, fb.fb_count) == (0x11, 0x22, 65534, 7)
    assert [seq for seq, _ in fb.arrivals] == [65534, 65535, 0, 1, 2, 3, 4, 5]  # wraps
    for (_, got), want in zip(fb.arrivals, arrivals, strict=True):
        if want is None:
            assert got is None
        else:
            assert got is not None
            # absolute times keep their 250 µs resolution (the reference is 64 ms units)
            assert got == pytest.approx(want, abs=0.00025)
    # 10.2 → 10.19 is a negative delta: a large (2-byte) symbol
    assert fb.arrivals[6][1] is not None and fb.arrivals[5][1] is not None
    assert fb.arrivals[6][1] < fb.arrivals[5][1]


def test_parse_status_vector_chunks_as_chrome_sends_them() -> None:
    # base 100, 17 packets, reference time 2 (128 ms), feedback count 3
    fci = struct.pack("!HHI", 100, 17, (2 << 8) | 3)
    # one-bit vector of 14: received, lost, received, 11 × lost
    fci += struct.pack("!H", 0x8000 | 0b10100000000000)
    # two-bit vector, 3 of its 7 used: small, large, lost
    fci += struct.pack("!H", 0xC000 | (0b01_10_00 << 8))
    # deltas (250 µs): 4, 8, 4, then -4 as a large one
    fci += bytes([4, 8, 4]) + (-4).to_bytes(2, "big", signed=True)
    fb = twcc.parse_fci(1, 2, fci)
    ms = {seq: None if t is None else round((t - 0.128) * 1000, 3) for seq, t in fb.arrivals}
    assert len(ms) == 17 and fb.fb_count == 3
    assert (ms[100], ms[101], ms[102], ms[103], ms[113]) == (1.0, None, 3.0, None, None)
    assert (ms[114], ms[115], ms[116]) == (4.0, 3.0, None)


def test_find_feedback_skips_other_rtcp_in_a_compound() -> None:
    compound = receiver_report(5, []) + twcc.build(5, 6, 1, 0, [1.0])
    (fb,) = twcc.find_feedback(compound)
    assert fb.arrivals == [(1, pytest.approx(1.0, abs=0.00025))]


@pytest.mark.parametrize(
    "fci",
    [
        b"\x00\x01",  # shorter than the fixed part
        struct.pack("!HHI", 1, 0, 0),  # no statuses
        struct.pack("!HHI", 1, 5, 0),  # statuses announced, chunks missing
        struct.pack("!HHI", 1, 2, 0) + struct.pack("!H", (1 << 13) | 2),  # deltas missing
        struct.pack("!HHI", 1, 1, 0) + struct.pack("!H", (3 << 13) | 1) + b"\x00",  # reserved
    ],
)
def test_malformed_feedback_is_a_value_error(fci: bytes) -> None:
    with pytest.raises(ValueError):
        twcc.parse_fci(1, 2, fci)


def test_truncated_compound_is_a_value_error_and_build_rejects_nothing_received() -> None:
    packet = twcc.build(1, 2, 0, 0, [0.5, 0.6])
    with pytest.raises(ValueError):
        twcc.find_feedback(packet[:-4])
    with pytest.raises(ValueError):
        twcc.build(1, 2, 0, 0, [None, None])
    with pytest.raises(ValueError):
        twcc.build(1, 2, 0, 0, [])


def _all_lost(count: int) -> bytes:
    """A TWCC packet announcing `count` statuses, all "not received", in 40-odd bytes."""
    chunks = b""
    left = count
    while left:
        run = min(left, twcc.MAX_RUN)
        chunks += struct.pack("!H", run)  # run-length chunk of "not received"
        left -= run
    fci = struct.pack("!HHI", 0, count, 0) + chunks
    fci += bytes(-len(fci) % 4)
    return struct.pack("!BBHII", 0x80 | 15, twcc.RTPFB, (8 + len(fci)) // 4, 1, 2) + fci


def test_feedback_asking_for_huge_work_is_refused_cheaply() -> None:
    """A viewer must not make the worker expand millions of statuses per datagram."""
    with pytest.raises(ValueError, match="statuses"):
        twcc.find_feedback(_all_lost(0xFFFF))
    with pytest.raises(ValueError, match="statuses"):  # many packets, each under the limit
        twcc.find_feedback(_all_lost(4000) * 3)
    assert len(twcc.find_feedback(_all_lost(100) * 3)) == 3


def _reported(packet: bytes | None) -> twcc.Feedback:
    assert packet is not None
    (fb,) = twcc.find_feedback(packet)
    return fb


def test_receiver_reports_arrivals_since_last_feedback_across_the_wrap() -> None:
    rx = twcc.TwccReceiver()
    assert rx.feedback(1, 2) is None  # nothing arrived yet
    for k, seq in enumerate([65533, 65534, 65535, 0, 1]):
        rx.on_packet(seq, 5.0 + 0.01 * k)
    fb = _reported(rx.feedback(1, 2))
    assert (fb.sender_ssrc, fb.media_ssrc, fb.base_seq, fb.fb_count) == (1, 2, 65533, 0)
    assert [s for s, _ in fb.arrivals] == [65533, 65534, 65535, 0, 1]
    for k, (_, got) in enumerate(fb.arrivals):
        assert got == pytest.approx(5.0 + 0.01 * k, abs=0.00025)
    assert rx.feedback(1, 2) is None  # nothing new since
    rx.on_packet(2, 5.1)
    fb = _reported(rx.feedback(1, 2))
    assert (fb.base_seq, fb.fb_count, len(fb.arrivals)) == (2, 1, 1)


def test_receiver_reports_gaps_as_lost_and_reordered_packets_in_place() -> None:
    rx = twcc.TwccReceiver()
    for seq, at in [(100, 1.0), (103, 1.03), (101, 1.04), (105, 1.05)]:
        rx.on_packet(seq, at)
    fb = _reported(rx.feedback(9, 9))
    got = {s: a for s, a in fb.arrivals}
    assert list(got) == [100, 101, 102, 103, 104, 105]
    assert got[102] is None and got[104] is None
    assert got[101] == pytest.approx(1.04, abs=0.00025)  # arrived after 103
    assert got[103] == pytest.approx(1.03, abs=0.00025)
    rx.on_packet(102, 1.2)  # too late: already reported lost
    assert rx.feedback(9, 9) is None


def test_receiver_splits_large_reports_and_bounds_its_window() -> None:
    rx = twcc.TwccReceiver()
    n = twcc.MAX_PER_PACKET + 10
    for seq in range(n):
        rx.on_packet(seq, 2.0 + seq * 0.0001)
    first, second = _reported(rx.feedback(1, 2)), _reported(rx.feedback(1, 2))
    assert len(first.arrivals) == twcc.MAX_PER_PACKET and first.base_seq == 0
    assert second.base_seq == twcc.MAX_PER_PACKET and len(second.arrivals) == 10
    assert rx.feedback(1, 2) is None
    # a sender far ahead of our reports: only the newest WINDOW are kept and reported
    for k in range(3 * twcc.WINDOW):
        rx.on_packet(n + k, 3.0 + k * 0.0001)
    reported = []
    while (packet := rx.feedback(1, 2)) is not None:
        reported += [s for s, a in _reported(packet).arrivals if a is not None]
    newest = n + 3 * twcc.WINDOW - 1
    assert reported == list(range(newest - twcc.WINDOW + 1, newest + 1))
