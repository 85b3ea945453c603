"""Media for the synthetic publisher, prepared once with FFmpeg and looped.

Three H.264 simulcast layers (libx264 baseline, one IDR every 2 s, access unit
delimiters to find frame boundaries) and Opus (libopus, 20 ms frames), cut into
RTP payloads with aiortc's H.264 packetizer. Files are cached by their recipe.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
from aiortc.codecs.h264 import H264Encoder

from tchat.sfu.rtp import h264_keyframe_start

FPS = 30
SECONDS = 4
# (rid, width, height, kbit/s), lowest first
LAYERS: list[tuple[str, int, int, int]] = [
    ("l", 160, 90, 80),
    ("m", 320, 180, 200),
    ("h", 640, 360, 600),
]
# the T069 suite's layers, near the issue's ~1.5 Mbps / 500 kbps / 150 kbps; constant
# bitrate (x264 fills with filler NALs) and a small VBV buffer so keyframes stay small
# bursts (a keyframe's packets leave the publisher at once and queue on a slow link)
LATENCY_LAYERS: list[tuple[str, int, int, int]] = [
    ("l", 320, 180, 150),
    ("m", 640, 360, 500),
    ("h", 1280, 720, 1500),
]
OPUS_FRAME_TS = 960  # 20 ms at 48 kHz


@dataclass(frozen=True)
class Frame:
    payloads: tuple[bytes, ...]  # RTP payloads; the last one carries the marker
    keyframe: bool


@dataclass(frozen=True)
class PreparedMedia:
    video: dict[str, list[Frame]]  # rid → frames in order (frame 0 is an IDR)
    audio: list[bytes]  # Opus packets, 20 ms each

    def payloads(self) -> list[bytes]:
        """Every payload the publisher can send (sampled viewers check against them)."""
        video = [p for frames in self.video.values() for f in frames for p in f.payloads]
        return video + list(self.audio)

    def known_payloads(self) -> set[int]:
        """Their hashes, as the Python viewer checks them (a native reader: `Swarm.know`)."""
        return {hash(p) for p in self.payloads()}


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-800:]}")


def prepare(
    cache_dir: Path,
    ffmpeg: str = "ffmpeg",
    layers: list[tuple[str, int, int, int]] | None = None,
    cbr: bool = False,
) -> PreparedMedia:
    """The layers (default LAYERS) and Opus; `cbr`: constant bitrate, VBV of 1/6 s."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    video: dict[str, list[Frame]] = {}
    for rid, width, height, kbps in layers or LAYERS:
        recipe = f"{width}x{height}@{FPS} {kbps}k {SECONDS}s g{2 * FPS}"
        bufsize, x264 = f"{kbps}k", "aud=1:repeat-headers=1"
        if cbr:
            recipe += " cbr"
            bufsize, x264 = f"{kbps // 6}k", x264 + ":nal-hrd=cbr"
        path = cache_dir / f"layer-{rid}-{hashlib.sha1(recipe.encode()).hexdigest()[:8]}.h264"
        if not path.exists():
            tmp = path.with_suffix(".tmp.h264")
            _run(
                [ffmpeg, "-v", "error", "-y", "-f", "lavfi",
                 "-i", f"testsrc2=size={width}x{height}:rate={FPS}", "-t", str(SECONDS),
                 "-c:v", "libx264", "-profile:v", "baseline", "-preset", "veryfast",
                 "-tune", "zerolatency", "-g", str(2 * FPS), "-keyint_min", str(2 * FPS),
                 "-sc_threshold", "0", "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k",
                 *(["-minrate", f"{kbps}k"] if cbr else []),
                 "-bufsize", bufsize, "-pix_fmt", "yuv420p",
                 "-x264-params", x264, "-f", "h264", str(tmp)]
            )  # fmt: skip
            tmp.rename(path)
        video[rid] = _frames(path.read_bytes())
    audio_path = cache_dir / "audio-opus-20ms.ogg"
    if not audio_path.exists():
        tmp = audio_path.with_suffix(".tmp.ogg")
        _run(
            [ffmpeg, "-v", "error", "-y", "-f", "lavfi",
             "-i", "sine=frequency=440:sample_rate=48000", "-t", str(SECONDS),
             "-c:a", "libopus", "-b:a", "32k", "-frame_duration", "20", "-ac", "2",
             str(tmp)]
        )  # fmt: skip
        tmp.rename(audio_path)
    with av.open(str(audio_path)) as container:
        audio = [bytes(p) for p in container.demux(audio=0) if p.size]
    return PreparedMedia(video, audio)


def _frames(stream: bytes) -> list[Frame]:
    """Access units (split at AUD NALs) → RTP payloads per frame."""
    frames: list[Frame] = []
    nals: list[bytes] = []

    def flush() -> None:
        if nals:
            payloads = tuple(H264Encoder._packetize(nals))
            frames.append(Frame(payloads, any(h264_keyframe_start(p) for p in payloads[:1])))
            nals.clear()

    for nal in H264Encoder._split_bitstream(stream):
        if not nal:
            continue
        if nal[0] & 0x1F == 9:  # access unit delimiter: a new frame starts
            flush()
            continue
        nals.append(nal)
    flush()
    if not frames or not frames[0].keyframe:
        raise RuntimeError("prepared H.264 does not start with a keyframe")
    return frames
