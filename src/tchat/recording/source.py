"""Recorder inputs. A source tells FFmpeg where to read and can be asked for a keyframe.

- `UdpMpegTsSource`: MPEG-TS over UDP on 127.0.0.1 (the synthetic test source,
  or any encoder pointed at it). Survives a recorder restart: the sender never
  notices that FFmpeg was replaced.
- `UrlSource`: anything FFmpeg can read (file, http, rtmp, srt…).
- RTP/SDP from the SFU plugs in as a third class; see docs/recording.md.
"""

from __future__ import annotations

import socket
from typing import Protocol


class Source(Protocol):
    def input_args(self) -> list[str]:
        """FFmpeg arguments that open the input (options, then `-i url`)."""
        ...

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe now (RTCP PLI for WebRTC); may be a no-op."""
        ...


class UdpMpegTsSource:
    def __init__(self, port: int, *, idle_timeout_s: float = 1.5, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.idle_timeout_s = idle_timeout_s

    @property
    def url(self) -> str:
        return f"udp://{self.host}:{self.port}"

    def input_args(self) -> list[str]:
        # `timeout`: FFmpeg ends the input (cleanly: last segment and ENDLIST written)
        # when no datagram arrived for that long — the stream has ended.
        query = f"fifo_size=1000000&overrun_nonfatal=1&timeout={int(self.idle_timeout_s * 1e6)}"
        return [
            "-analyzeduration",
            "1000000",
            "-probesize",
            "1000000",
            "-i",
            f"{self.url}?{query}",
        ]

    def request_keyframe(self) -> None:
        return None  # an MPEG-TS sender keeps its own GOP (1 s for the synthetic source)


class UrlSource:
    def __init__(self, url: str, *, options: list[str] | None = None) -> None:
        self.url = url
        self.options = options or []

    def input_args(self) -> list[str]:
        return [*self.options, "-i", self.url]

    def request_keyframe(self) -> None:
        return None


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
