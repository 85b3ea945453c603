"""A synthetic live source: FFmpeg lavfi testsrc2 + sine, encoded in real time.

Like the guide's mock generator, but a real H.264/AAC stream: libx264 ultrafast,
a keyframe every second, wall-clock time and stream time burnt into the picture,
sent as MPEG-TS over UDP to a recorder's `UdpMpegTsSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path


def _inputs(size: str, fps: int, duration_s: float) -> list[str]:
    """Test picture and a 440 Hz tone, both read at their native rate (-re): a live source."""
    return [
        "-re",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate={fps}",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        f"{duration_s:.3f}",
    ]


def _video(fps: int, keyframe_s: float) -> list[str]:
    """Clock-stamped H.264 with a fixed GOP, so segments cut on predictable keyframes."""
    gop = str(max(1, round(fps * keyframe_s)))
    text = "%{localtime\\:%T} t=%{pts\\:hms}"
    return [
        "-vf",
        f"drawtext=text='{text}':x=6:y=6:fontsize=14:fontcolor=white:box=1:boxcolor=black",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-g",
        gop,
        "-keyint_min",
        gop,
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
    ]


def _output(port: int, rtp: bool) -> list[str]:
    if rtp:
        return ["-an", "-payload_type", "96", "-f", "rtp", f"rtp://127.0.0.1:{port}?pkt_size=1200"]
    return [
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-f",
        "mpegts",
        f"udp://127.0.0.1:{port}?pkt_size=1316",
    ]


def synthetic_args(
    ffmpeg: str,
    port: int,
    duration_s: float,
    *,
    size: str = "320x180",
    fps: int = 25,
    keyframe_s: float = 1.0,
    rtp: bool = False,
) -> list[str]:
    """FFmpeg arguments of the source: MPEG-TS (H.264 + AAC) over UDP, or with `rtp`
    H.264 alone as RTP (payload type 96), the way the SFU will hand video over."""
    return [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        *_inputs(size, fps, duration_s),
        *_video(fps, keyframe_s),
        *_output(port, rtp),
    ]


class SyntheticStream:
    """The publisher side of a test: `start()`, then `wait()` until it has sent it all."""

    def __init__(self, ffmpeg: str, port: int, duration_s: float, *, rtp: bool = False) -> None:
        self.args = synthetic_args(ffmpeg, port, duration_s, rtp=rtp)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

    async def wait(self) -> int:
        assert self.proc is not None
        _, err = await self.proc.communicate()
        if self.proc.returncode != 0:
            raise RuntimeError(f"synthetic source failed: {err.decode(errors='replace')[-500:]}")
        return self.proc.returncode

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


async def wait_udp_listener(port: int, timeout_s: float = 60.0) -> bool:
    """True once something is bound to UDP port (Linux /proc/net/udp).

    A publisher that starts before the recorder listens loses its first keyframe,
    and the first segment then begins mid-GOP; the tests start their source after
    this, as the SFU will ask for a keyframe once the recorder is ready. The deadline is
    generous: FFmpeg starts in ~0.2 s, but took over 10 s on a busy 2-core box.
    """
    needle = f":{port:04X}"  # FFmpeg binds the port on any address
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        table = await asyncio.to_thread(Path("/proc/net/udp").read_text)
        if any(line.split()[1].endswith(needle) for line in table.splitlines()[1:]):
            return True
        await asyncio.sleep(0.02)
    return False
