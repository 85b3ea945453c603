"""What a closed MPEG-TS segment holds, sans I/O: its streams' time spans and H.264 SPSs.

The recorder reads every segment FFmpeg closes (a few MB at most, in a thread) and
takes from it, not from FFmpeg's playlist, two things:

- **the duration**: FFmpeg 5.1's hls muxer writes the last segment's `#EXTINF` from
  the last video packet alone (0.000044 s for 0.25 s of media was seen) and counts
  segment 0 from the video's start even when audio starts earlier. Here a segment
  lasts from its first timestamp (any stream) to the end of its last video frame —
  the next segment's first frame — and the last segment of a run to the end of
  whichever stream ends last (its final audio frames included).
- **the sequence parameter sets**: a simulcast layer change (or a new encoder) shows
  as a new SPS; the recorder marks a segment that starts with one as a
  discontinuity and logs the resolution (docs/recording.md).
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field

TS_PACKET = 188
PTS_HZ = 90_000
_WRAP = 1 << 33
STREAM_TYPES = {0x1B: "video", 0x0F: "audio"}  # H.264, AAC (ADTS): what the recorder writes
ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


class TsError(ValueError):
    """Not an MPEG-TS segment we can read."""


@dataclass(slots=True)
class StreamSpan:
    """Presentation times (90 kHz, unwrapped from the stream's first) of one stream."""

    first: int
    pts: list[int] = field(default_factory=list)
    last_frame: int = 0  # duration of what the last PES holds (90 kHz), when known
    unit: int = 0  # duration of one access unit: a video frame, an AAC frame

    @property
    def end(self) -> int:
        return max(self.pts) + self.last_frame


@dataclass(slots=True)
class SegmentInfo:
    video: StreamSpan | None = None
    audio: StreamSpan | None = None
    sps: list[bytes] = field(default_factory=list)  # distinct SPS NAL units, in order

    def _rel(self, span: StreamSpan, value: int) -> int:
        """`value` of `span` on a common clock: 90 kHz since the video's (or audio's) first."""
        ref = (self.video or span).first
        diff = (span.first - ref) % _WRAP
        return value + (diff - _WRAP if diff >= _WRAP // 2 else diff)

    def duration(self, *, last: bool, frame_s: float = 0.0) -> float:
        """Seconds from the first timestamp to where the next segment starts: the end of
        the last video frame, or of the audio when the video stopped early (its last AAC
        frame may reach into the next segment: not counted, so durations do not
        overlap). `last`: the end of whichever stream ends last. A video of one frame
        (its rate unknown here) lasts `frame_s`. 0.0 without media."""
        spans = [s for s in (self.video, self.audio) if s is not None and s.pts]
        if not spans:
            return 0.0
        start = min(self._rel(s, min(s.pts)) for s in spans)
        ends = []
        for s in spans:
            end = s.end
            if s is self.video and not s.last_frame:
                end += round(frame_s * PTS_HZ)
            elif s is self.audio and not last:
                end -= s.unit
            ends.append(self._rel(s, end))
        return max(0, max(ends) - start) / PTS_HZ

    @property
    def frame_interval(self) -> float:
        return self.video.last_frame / PTS_HZ if self.video else 0.0


def _unwrap(first: int, pts: int) -> int:
    diff = (pts - first) % _WRAP
    return diff - _WRAP if diff >= _WRAP // 2 else diff


def _pes_pts(payload: bytes) -> int | None:
    if len(payload) < 14 or payload[:3] != b"\x00\x00\x01" or not payload[7] & 0x80:
        return None
    p = payload[9:14]
    return ((p[0] >> 1) & 7) << 30 | p[1] << 22 | (p[2] >> 1) << 15 | p[3] << 7 | p[4] >> 1


def _pes_body(payload: bytes) -> bytes:
    return payload[9 + payload[8] :] if len(payload) > 9 else b""


def _section(payload: bytes) -> bytes:
    """A PSI section (PAT/PMT) from the payload that starts it; b'' if cut short."""
    if not payload:
        return b""
    start = 1 + payload[0]  # pointer_field
    if start + 3 > len(payload):
        return b""
    length = ((payload[start + 1] & 0x0F) << 8) | payload[start + 2]
    return payload[start : start + 3 + length]


def _pat_pmt_pids(section: bytes) -> list[int]:
    pids = []
    for i in range(8, len(section) - 4, 4):  # after the header, before the CRC
        if (section[i] << 8) | section[i + 1]:  # program 0 is the network PID
            pids.append(((section[i + 2] & 0x1F) << 8) | section[i + 3])
    return pids


def _pmt_streams(section: bytes) -> dict[int, str]:
    streams: dict[int, str] = {}
    if len(section) < 12:
        return streams
    i = 12 + (((section[10] & 0x0F) << 8) | section[11])
    while i + 5 <= len(section) - 4:
        kind = STREAM_TYPES.get(section[i])
        pid = ((section[i + 1] & 0x1F) << 8) | section[i + 2]
        if kind is not None:
            streams[pid] = kind
        i += 5 + (((section[i + 3] & 0x0F) << 8) | section[i + 4])
    return streams


def nal_units(es: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (start codes removed)."""
    units = []
    i = es.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        nxt = es.find(b"\x00\x00\x01", start)
        end = len(es) if nxt < 0 else nxt
        while end > start and es[end - 1] == 0 and nxt >= 0:  # 4-byte start code / zeros
            end -= 1
        if end > start:
            units.append(es[start:end])
        i = nxt
    return units


def _adts_frames(data: bytes) -> tuple[int, int]:
    """(samples, sample rate) of the ADTS frames in one PES body."""
    i, samples, rate = 0, 0, 0
    while i + 7 <= len(data) and data[i] == 0xFF and data[i + 1] & 0xF0 == 0xF0:
        index = (data[i + 2] >> 2) & 0x0F
        rate = ADTS_RATES[index] if index < len(ADTS_RATES) else 0
        length = ((data[i + 3] & 3) << 11) | (data[i + 4] << 3) | (data[i + 5] >> 5)
        samples += 1024 * ((data[i + 6] & 3) + 1)
        if length < 7:
            break
        i += length
    return samples, rate


def scan(data: bytes) -> SegmentInfo:
    """Read one segment; raises TsError if it is not MPEG-TS."""
    if len(data) < TS_PACKET or data[0] != 0x47:
        raise TsError("not an MPEG-TS segment (no sync byte)")
    pmt_pids: set[int] = set()
    streams: dict[int, str] = {}
    info = SegmentInfo()
    video_es: list[bytes] = []
    audio_pes: dict[int, list[bytes]] = {}  # the body of the last audio PES, per PID
    for off in range(0, len(data) - TS_PACKET + 1, TS_PACKET):
        pkt = data[off : off + TS_PACKET]
        if pkt[0] != 0x47:
            raise TsError(f"lost sync at byte {off}")
        pid = ((pkt[1] & 0x1F) << 8) | pkt[2]
        start = bool(pkt[1] & 0x40)
        afc = (pkt[3] >> 4) & 3
        if not afc & 1:
            continue  # adaptation field only
        pos = 4 + (1 + pkt[4] if afc & 2 else 0)
        payload = pkt[pos:]
        if pid == 0 and start:
            pmt_pids.update(_pat_pmt_pids(_section(payload)))
        elif pid in pmt_pids and start:
            streams.update(_pmt_streams(_section(payload)))
        elif pid in streams:
            kind = streams[pid]
            if start:
                pts = _pes_pts(payload)
                body = _pes_body(payload)
                if pts is not None:
                    span = getattr(info, kind)
                    if span is None:
                        span = StreamSpan(first=pts)
                        setattr(info, kind, span)
                    span.pts.append(_unwrap(span.first, pts))
                if kind == "audio":
                    audio_pes[pid] = [body]
                else:
                    video_es.append(body)
            elif kind == "audio":
                audio_pes.setdefault(pid, []).append(payload)
            else:
                video_es.append(payload)
    if info.video is not None and info.video.pts:
        ordered = sorted(info.video.pts)
        steps = [b - a for a, b in itertools.pairwise(ordered) if b > a]
        info.video.last_frame = info.video.unit = int(statistics.median(steps)) if steps else 0
    if info.audio is not None and audio_pes:
        samples, rate = _adts_frames(b"".join(next(iter(audio_pes.values()))))
        if rate:
            info.audio.last_frame = samples * PTS_HZ // rate
            info.audio.unit = 1024 * PTS_HZ // rate
    for unit in nal_units(b"".join(video_es)):
        if unit[0] & 0x1F == 7 and (not info.sps or info.sps[-1] != unit):
            info.sps.append(unit)
    return info


# -- SPS: the picture size ----------------------------------------------------------------


class _Bits:
    def __init__(self, rbsp: bytes) -> None:
        self.data = rbsp
        self.pos = 0

    def bit(self) -> int:
        if self.pos >= len(self.data) * 8:
            raise TsError("SPS cut short")
        byte = self.data[self.pos >> 3]
        self.pos += 1
        return (byte >> (7 - ((self.pos - 1) & 7))) & 1

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise TsError("bad Exp-Golomb code in SPS")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        v = self.ue()
        return (v + 1) // 2 if v & 1 else -(v // 2)


def _rbsp(nal: bytes) -> bytes:
    """Emulation-prevention bytes (00 00 03) removed."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def sps_size(sps: bytes) -> tuple[int, int]:
    """(width, height) of an H.264 SPS NAL unit (ITU-T H.264 §7.3.2.1.1)."""
    r = _Bits(_rbsp(sps[1:]))
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma = 1
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = r.ue()
        if chroma == 3:
            r.bit()
        r.ue()
        r.ue()
        r.bit()
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.bit():
                    last = nxt = 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se() + 256) % 256
                        last = nxt or last
    r.ue()  # log2_max_frame_num_minus4
    poc = r.ue()
    if poc == 0:
        r.ue()
    elif poc == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()
    r.bit()  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if r.bit():
        crop = (r.ue(), r.ue(), r.ue(), r.ue())
    sub_w, sub_h = (2, 2) if chroma == 1 else (2, 1) if chroma == 2 else (1, 1)
    crop_x = sub_w if chroma else 1
    crop_y = (sub_h if chroma else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - crop_y * (crop[2] + crop[3])
    return width, height
