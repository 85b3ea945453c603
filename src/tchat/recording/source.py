"""Recorder inputs. A source tells FFmpeg where to read and can be asked for a keyframe.

- `UdpMpegTsSource`: MPEG-TS over UDP on 127.0.0.1 (the synthetic test source,
  or any encoder pointed at it). Survives a recorder restart: the sender never
  notices that FFmpeg was replaced.
- `UrlSource`: anything FFmpeg can read (file, http, rtmp, srt…).
- `SdpSource`: plain RTP on loopback described by an SDP file — what the SFU's
  recorder sink will send (docs/recording.md says how it plugs in).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Source(Protocol):
    def input_args(self) -> list[str]:
        """FFmpeg arguments that open the input (options, then `-i url`)."""
        ...

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe now (RTCP PLI for WebRTC); may be a no-op."""
        ...

    def run_started(self) -> None:
        """A (new) FFmpeg process reads the input from now on."""
        ...

    def stream_time(self) -> float | None:
        """Seconds of media this FFmpeg run has received, on FFmpeg's own timeline, if the
        source knows it (its segment boundaries are on that timeline; the recorder
        times its keyframe requests by it)."""
        ...

    def describe(self) -> str:
        """What the source knows of its media so far, for a recording that got none."""
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

    def run_started(self) -> None:
        return None

    def stream_time(self) -> float | None:
        return None

    def describe(self) -> str:
        return self.url


class UrlSource:
    def __init__(self, url: str, *, options: list[str] | None = None) -> None:
        self.url = url
        self.options = options or []

    def input_args(self) -> list[str]:
        return [*self.options, "-i", self.url]

    def request_keyframe(self) -> None:
        return None

    def run_started(self) -> None:
        return None

    def stream_time(self) -> float | None:
        return None

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True, slots=True)
class RtpStream:
    """One RTP stream the SFU forwards to the recorder (plain RTP on 127.0.0.1)."""

    kind: str  # "video" or "audio"
    port: int  # even; FFmpeg uses port + 1 for RTCP
    payload_type: int
    encoding: str  # rtpmap, e.g. "H264/90000" or "opus/48000/2"
    fmtp: str = ""  # e.g. "packetization-mode=1;profile-level-id=42e01f"


def render_sdp(streams: list[RtpStream]) -> str:
    """The SDP FFmpeg reads to receive the streams; ValueError on a bad description."""
    if not streams:
        raise ValueError("an SDP input needs at least one stream")
    lines = ["v=0", "o=- 0 0 IN IP4 127.0.0.1", "s=tchat recording", "c=IN IP4 127.0.0.1"]
    lines.append("t=0 0")
    ports = set()
    for st in streams:
        if st.kind not in ("video", "audio"):
            raise ValueError(f"stream kind must be video or audio, not {st.kind!r}")
        if not (1024 <= st.port <= 65534 and st.port % 2 == 0):
            raise ValueError(f"RTP port {st.port} must be even and within 1024-65534")
        if st.port in ports or st.port + 1 in ports or st.port - 1 in ports:
            raise ValueError(f"RTP port {st.port} overlaps another stream's RTP/RTCP pair")
        if not 96 <= st.payload_type <= 127:
            raise ValueError(f"payload type {st.payload_type} is not dynamic (96-127)")
        ports.add(st.port)
        lines.append(f"m={st.kind} {st.port} RTP/AVP {st.payload_type}")
        lines.append(f"a=rtpmap:{st.payload_type} {st.encoding}")
        if st.fmtp:
            lines.append(f"a=fmtp:{st.payload_type} {st.fmtp}")
    return "\r\n".join(lines) + "\r\n"


class SdpSource:
    """RTP/SDP input. `keyframe` is the SFU's PLI sender for the recorded video layer.
    `live`: its input going quiet is a stall, not the end (the owner stops it)."""

    live = True

    def __init__(
        self,
        sdp_path: Path,
        streams: list[RtpStream],
        *,
        keyframe: Callable[[], None] | None = None,
        idle_timeout_s: int = 2,
        codec_args: list[str] | None = None,
        stream_time: Callable[[], float | None] | None = None,
        on_run: Callable[[], None] | None = None,
        describe: Callable[[], str] | None = None,
    ) -> None:
        # absolute: FFmpeg runs in the recording's own directory, not ours
        self.sdp_path = sdp_path.absolute()
        # output codecs: copy, but Opus must become AAC for MPEG-TS HLS in browsers
        self.codec_args = codec_args or ["-c", "copy"]
        self.streams = streams
        self.keyframe = keyframe
        self._stream_time = stream_time
        self.on_run = on_run
        self._describe = describe
        self.idle_timeout_s = idle_timeout_s
        self.sdp_path.parent.mkdir(parents=True, exist_ok=True)
        self.sdp_path.write_text(render_sdp(streams))

    def input_args(self) -> list[str]:
        # `-listen_timeout`: FFmpeg 5.1 ends a quiet RTP input cleanly (exit 0, ENDLIST);
        # a SIGTERM alone does not (docs/recording.md).
        return [
            "-protocol_whitelist",
            "file,udp,rtp",
            "-reorder_queue_size",
            "64",
            "-analyzeduration",
            "1000000",
            "-listen_timeout",
            str(self.idle_timeout_s),
            "-i",
            str(self.sdp_path),
        ]

    def request_keyframe(self) -> None:
        if self.keyframe is not None:
            self.keyframe()

    def run_started(self) -> None:
        if self.on_run is not None:
            self.on_run()

    def stream_time(self) -> float | None:
        return self._stream_time() if self._stream_time is not None else None

    def describe(self) -> str:
        return self._describe() if self._describe is not None else str(self.sdp_path)


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_rtp_port(host: str = "127.0.0.1") -> int:
    """An even UDP port whose odd neighbour (RTCP) is free too."""
    for _ in range(50):
        port = free_udp_port(host) & ~1
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
            ):
                a.bind((host, port))
                b.bind((host, port + 1))
        except OSError:
            continue
        if port >= 1024:
            return port
    raise OSError("no free even UDP port pair for RTP/RTCP")
