"""tsinfo: a segment's duration from its own timestamps and its SPSs, on MPEG-TS built
here byte by byte (PAT, PMT, PES with PTS, ADTS frames, an SPS for 320×180)."""

from __future__ import annotations

import pytest

from tchat.recording.tsinfo import TsError, nal_units, scan, sps_size

VIDEO_PID, AUDIO_PID, PMT_PID = 0x100, 0x101, 0x1000


class Bits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, v: int) -> Bits:
        self.bits += [(v >> (n - 1 - i)) & 1 for i in range(n)]
        return self

    def ue(self, v: int) -> Bits:
        code = v + 1
        n = code.bit_length()
        return self.u(n - 1, 0).u(n, code)

    def bytes(self) -> bytes:
        bits = [*self.bits, 1]  # rbsp_stop_one_bit
        bits += [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def sps(width_mbs: int, height_mbs: int, crop_bottom: int, profile: int = 66) -> bytes:
    b = Bits().u(8, profile).u(8, 0xC0).u(8, 30).ue(0)
    if profile == 100:
        b.ue(1).ue(0).ue(0).u(1, 0).u(1, 0)  # 4:2:0, 8 bit, no scaling matrices
    b.ue(0).ue(2).ue(1).u(1, 0)  # frame_num bits, POC type 2, 1 ref frame
    b.ue(width_mbs - 1).ue(height_mbs - 1).u(1, 1).u(1, 1)
    b.u(1, 1).ue(0).ue(0).ue(0).ue(crop_bottom)  # frame cropping
    b.u(1, 0)  # no VUI
    return bytes([0x67]) + b.bytes()


def ts_packets(pid: int, payload: bytes, start: bool) -> list[bytes]:
    out = []
    cc = 0
    while payload or not out:
        chunk, payload = payload[:184], payload[184:]
        header = bytes([0x47, (0x40 if start and not out else 0) | pid >> 8, pid & 0xFF])
        if len(chunk) < 184:  # stuffing in an adaptation field
            stuff = 184 - len(chunk) - 1
            af = bytes([stuff]) + (bytes([0x00]) + b"\xff" * (stuff - 1) if stuff else b"")
            out.append(header + bytes([0x30 | cc]) + af + chunk)
        else:
            out.append(header + bytes([0x10 | cc]) + chunk)
        cc = (cc + 1) & 0xF
    return out


def section(table_id: int, body: bytes) -> bytes:
    length = 5 + len(body) + 4
    head = bytes([table_id, 0xB0 | length >> 8, length & 0xFF, 0, 1, 0xC1, 0, 0])
    return b"\x00" + head + body + b"\x00\x00\x00\x00"  # pointer field; CRC not checked


def pes(stream_id: int, pts: int, body: bytes) -> bytes:
    p = bytes([
        0x21 | ((pts >> 29) & 0x0E), (pts >> 22) & 0xFF, 0x01 | ((pts >> 14) & 0xFE),
        (pts >> 7) & 0xFF, 0x01 | ((pts << 1) & 0xFE),
    ])  # fmt: skip
    return b"\x00\x00\x01" + bytes([stream_id, 0, 0, 0x80, 0x80, 5]) + p + body


def adts(frames: int) -> bytes:
    frame = bytes([0xFF, 0xF1, 0x4C, 0x80, 0x01, 0x3F, 0xFC]) + bytes(2)  # 48 kHz, 9 bytes
    return frame * frames


def segment(video: list[tuple[int, bytes]], audio: list[tuple[int, int]]) -> bytes:
    pat = section(0x00, bytes([0, 1, 0xE0 | PMT_PID >> 8, PMT_PID & 0xFF]))
    streams = bytes([0x1B, 0xE1, 0x00, 0xF0, 0x00, 0x0F, 0xE1, 0x01, 0xF0, 0x00])
    pmt = section(0x02, bytes([0xE1, 0x00, 0xF0, 0x00]) + streams)
    out = ts_packets(0, pat, True) + ts_packets(PMT_PID, pmt, True)
    for (vpts, es), (apts, n) in zip(video, audio, strict=False):
        out += ts_packets(VIDEO_PID, pes(0xE0, vpts, es), True)
        out += ts_packets(AUDIO_PID, pes(0xC0, apts, adts(n)), True)
    for vpts, es in video[len(audio) :]:
        out += ts_packets(VIDEO_PID, pes(0xE0, vpts, es), True)
    return b"".join(out)


AUD = b"\x00\x00\x00\x01\x09\xf0"
PPS = b"\x00\x00\x00\x01\x68\xce\x38\x80"
SLICE = b"\x00\x00\x01\x65" + bytes(range(1, 250)) * 2  # spans several TS packets


def test_sps_size_baseline_and_high() -> None:
    assert sps_size(sps(20, 12, 6)) == (320, 180)
    assert sps_size(sps(80, 45, 0)) == (1280, 720)
    assert sps_size(sps(40, 23, 4, profile=100)) == (640, 360)
    with pytest.raises(TsError):
        sps_size(b"\x67\x42")


def test_durations_and_layer_changes_from_the_segment_itself() -> None:
    small, big = sps(20, 12, 6), sps(40, 23, 4)
    key_small = AUD + b"\x00\x00\x00\x01" + small + PPS + SLICE
    key_big = AUD + b"\x00\x00\x00\x01" + big + PPS + SLICE
    delta = AUD + b"\x00\x00\x01\x41" + bytes(100)
    # audio starts 0.5 s before the video; 3 frames of 1/30 s; the last audio PES holds
    # 4 AAC frames (4 × 1024 samples at 48 kHz) and ends after the last video frame
    start = 8_589_930_000  # near the 33-bit wrap: the arithmetic must unwrap
    video = [(start + 45_000, key_small), (start + 48_000, delta), (start + 51_000, key_big)]
    audio = [(start, 1), ((start + 49_000) % (1 << 33), 4)]
    info = scan(segment([(v % (1 << 33), es) for v, es in video], audio))
    assert info.video is not None and info.audio is not None
    assert info.frame_interval == pytest.approx(1 / 30)
    # from the first timestamp (audio) to where the next segment starts: here the audio
    # goes on after the video's last frame, up to its last AAC frame (which may reach
    # into the next segment: not counted)
    assert info.duration(last=False) == pytest.approx((49_000 + 3 * 1920) / 90_000)
    only_video = scan(segment([(v % (1 << 33), es) for v, es in video], audio[:1]))
    assert only_video.duration(last=False) == pytest.approx(0.5 + 3 / 30)
    # the last segment of a recording ends with whatever ends last (the audio here)
    assert info.duration(last=True) == pytest.approx((49_000 + 4 * 1024 * 90_000 / 48_000) / 90_000)
    assert [sps_size(s) for s in info.sps] == [(320, 180), (640, 360)]


def test_not_ts_is_an_error_and_nal_units_split() -> None:
    with pytest.raises(TsError):
        scan(b"\x00" * 376)
    assert nal_units(b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01\x67\x42") == [b"\x09\xf0", b"\x67\x42"]


def test_a_last_segment_of_one_keyframe_lasts_one_frame() -> None:
    """FFmpeg cuts at a keyframe asked for just before the stop: the last segment holds
    one frame (and an audio PES without a whole AAC frame). It lasts a frame, not the
    6 s of FFmpeg's EXTINF (a 7 s recording was listed as 13 s and hls.js ended at 7)."""
    key = AUD + b"\x00\x00\x00\x01" + sps(20, 12, 6) + PPS + SLICE
    info = scan(segment([(90_000, key)], [(90_000, 0)]))
    assert info.video is not None and info.frame_interval == 0.0
    assert info.duration(last=True) == 0.0  # nothing in the segment says how long
    assert info.duration(last=True, frame_s=1 / 25) == pytest.approx(1 / 25)
    assert info.duration(last=False, frame_s=1 / 25) == pytest.approx(1 / 25)
