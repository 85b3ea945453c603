"""Record every WHIP publish: plain RTP copies of the publisher's tracks to FFmpeg.

When a publisher's media starts flowing (`SfuWorker.publish_listeners`), a
`RecorderSink` adds one `DownTrack` per track whose `protect` is the identity and
whose `send` writes to a loopback UDP port FFmpeg reads through an SDP file
(`recording.source.SdpSource`). Video is pinned to the top simulcast layer; the
DownTrack rewrite keeps sequence numbers and timestamps continuous. The recorder's
keyframe requests become PLIs to the publisher (rate-limited by the Track). When
the publish ends the sink detaches and the recorder finalizes (docs/recording.md).

Only H.264 video can be copied into MPEG-TS HLS: a VP8 publisher's video is not
recorded (its audio is), and the log says so. Opus is transcoded to AAC, the one
transcode, because browsers cannot play Opus in MPEG-TS.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

from fastapi import FastAPI

from tchat.config import Settings
from tchat.recording.recorder import Recorder
from tchat.recording.service import RecordingService
from tchat.recording.source import RtpStream, SdpSource, free_rtp_port
from tchat.sfu import sdp
from tchat.sfu.forwarder import HIGH, DownTrack, Track
from tchat.sfu.worker import Peer, SfuWorker

log = logging.getLogger("tchat.sfu.recording")

# by lower-case mime (encoding names are case-insensitive): the rtpmap FFmpeg reads
RECORDABLE = {"video/h264": "H264", "audio/opus": "opus"}
# extra keyframe requests while FFmpeg starts: the first PLI may beat its socket
STARTUP_PLI_S = (0.5, 1.0, 2.0)


def rtp_stream(media: sdp.Media, port: int) -> RtpStream | None:
    """The SDP description of one negotiated media, or None if HLS cannot carry it."""
    codec = media.codec
    name = RECORDABLE.get(codec.mime.lower()) if codec is not None else None
    if codec is None or name is None:
        return None
    encoding = f"{name}/{codec.clock_rate}"
    if media.kind == "audio":
        encoding += f"/{codec.channels or 2}"
    fmtp = ";".join(f"{k}={v}" for k, v in codec.fmtp)
    return RtpStream(media.kind, port, codec.payload_type, encoding, fmtp)


def _identity(data: bytes) -> bytes:
    return data


@dataclass(eq=False)
class RecorderSink:
    """The loopback RTP copies of one publisher's tracks."""

    clock: Callable[[], float]  # the worker's clock (the Track's PLI limit runs on it)
    tracks: dict[str, tuple[Track, DownTrack]] = field(default_factory=dict)
    sock: socket.socket | None = None
    sent: int = 0
    errors: int = 0
    gaps: int = 0  # holes in the recorded video the SFU could not repair
    _video_seq: int = -1

    @classmethod
    def attach(
        cls,
        peer: Peer,
        clock: Callable[[], float],
        port_of: Callable[[], int] = free_rtp_port,
    ) -> tuple[RecorderSink, list[RtpStream]]:
        """Add a DownTrack per recordable track of `peer`; returns the sink and its streams."""
        sink = cls(clock)
        now = clock()
        streams: list[RtpStream] = []
        for media in peer.media:
            track = peer.room.tracks.get(media.kind)
            if track is None:
                continue
            stream = rtp_stream(media, port_of())
            if stream is None:
                log.warning(
                    "not recording %s of room %s: %s cannot go into HLS (publish H.264)",
                    media.kind,
                    peer.room.name,
                    media.codec.mime if media.codec else "no codec",
                )
                continue
            streams.append(stream)
            target = ("127.0.0.1", stream.port)
            dt = DownTrack(
                ssrc=secrets.randbits(31) | 1,
                pt=stream.payload_type,
                clock_rate=track.clock_rate,
                protect=_identity,
                send=partial(sink._send, target=target, video=media.kind == "video"),
                max_layer=HIGH,  # the recording is the best layer, whatever viewers get
                first_seq=secrets.randbits(16),
                first_ts=secrets.randbits(32),
            )
            sink.tracks[media.kind] = (track, dt)
        if streams:
            sink.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.sock.setblocking(False)
            sink.sock.bind(("127.0.0.1", 0))
            for track, dt in sink.tracks.values():
                track.add(dt, now)
        return sink, streams

    def _send(self, data: bytes, *, target: tuple[str, int], video: bool) -> None:
        assert self.sock is not None
        if video:
            # The rewrite keeps numbering continuous, so a hole here is loss upstream that
            # NACKs did not repair: ask for a keyframe so the next segment starts clean.
            seq = (data[2] << 8) | data[3]
            if self._video_seq >= 0 and 0 < (seq - self._video_seq - 1) & 0xFFFF < 0x8000:
                self.gaps += 1
                self.request_keyframe(self.clock())
            if self._video_seq < 0 or (seq - self._video_seq) & 0xFFFF < 0x8000:
                self._video_seq = seq
        try:
            self.sock.sendto(data, target)
            self.sent += 1
        except OSError:  # FFmpeg not listening yet / gone, or a full buffer: drop
            self.errors += 1

    def request_keyframe(self, now: float) -> None:
        pair = self.tracks.get("video")
        if pair is not None:
            pair[0].keyframe_wanted(pair[1], now)

    def detach(self) -> None:
        for track, dt in self.tracks.values():
            track.remove(dt)
        self.tracks.clear()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class LiveRecording:
    """Starts a recording per publish on `worker`, stops it when the publish ends."""

    def __init__(self, worker: SfuWorker, service: RecordingService) -> None:
        self.worker = worker
        self.service = service
        self.active: dict[str, tuple[RecorderSink, Recorder]] = {}  # by publisher peer id

    def __call__(self, peer: Peer, live: bool) -> None:
        if live:
            self._start(peer)
        else:
            self._stop(peer)

    def _start(self, peer: Peer) -> None:
        worker = self.worker
        sink, streams = RecorderSink.attach(peer, worker.now)
        if not streams:
            return
        has_audio = any(s.kind == "audio" for s in streams)
        sdp_path = self.service.workdir / f"{peer.id}.sdp"
        try:
            source = SdpSource(
                sdp_path,
                streams,
                keyframe=lambda: sink.request_keyframe(worker.now()),
                codec_args=["-c:v", "copy", "-c:a", "aac", "-b:a", "128k"] if has_audio else None,
            )
            recorder = self.service.start(peer.room.name, source)
        except Exception:
            sink.detach()  # no recording: stop copying the stream
            raise
        self.active[peer.id] = (sink, recorder)
        # a recording that ends on its own (FFmpeg failed for good) stops the copying too
        recorder.on_done(lambda _: self._stop(peer))
        # FFmpeg rereads the SDP file on each restart: it goes when the recording is done
        recorder.on_done(lambda _: sdp_path.unlink(missing_ok=True))
        loop = asyncio.get_running_loop()
        for delay in STARTUP_PLI_S:
            loop.call_later(delay, lambda: sink.request_keyframe(worker.now()))
        log.info(
            "recording room=%s id=%s streams=%s",
            peer.room.name,
            recorder.id,
            ",".join(f"{s.kind}:{s.encoding}@{s.port}" for s in streams),
        )

    def _stop(self, peer: Peer) -> None:
        entry = self.active.pop(peer.id, None)
        if entry is None:
            return
        sink, recorder = entry
        sink.detach()
        recorder.stop()

    def recording_of(self, room: str) -> str | None:
        """The id of the room's live recording, if any."""
        for sink_recorder in self.active.values():
            if sink_recorder[1].room == room:
                return sink_recorder[1].id
        return None


def mount(app: FastAPI, settings: Settings) -> None:
    """Wire the SFU to the recording service (both components must already be entered)."""
    app.state.components.append(_component(settings))


def _component(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def live_recording(app: FastAPI) -> AsyncIterator[None]:
        app.state.live_recording = None
        # with NUM_SFU_INSTANCES > 1 there is no in-process worker: each instance
        # process records the rooms it originates (sfu/node.py)
        if settings.sfu_record and hasattr(app.state, "sfu"):
            live = LiveRecording(app.state.sfu, app.state.recording)
            app.state.sfu.publish_listeners.append(live)
            app.state.live_recording = live
        yield

    return live_recording
