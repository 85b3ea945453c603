"""Record every WHIP publish: plain RTP copies of the publisher's tracks to FFmpeg.

The recorder is one more reader of a publish (sfu/tap.py): when a publisher's media
starts flowing (`SfuWorker.publish_listeners`), a `RecorderSink` opens a `Tap` per
recordable track, whose plain RTP goes to a loopback UDP port FFmpeg reads through an
SDP file (`recording.source.SdpSource`). The app wires the two (`mount`; for a cluster
instance, tchat/instance.py); the SFU does not import the recorder. Nothing is sent
until FFmpeg listens; then the video starts on a keyframe of the best simulcast layer
flowing (`LayerPlan`) and the audio with it, so both streams start together in
FFmpeg's timeline.

The recording records what flows. It starts on the best layer arriving — whatever
the top layer does — and changes layer only at one of the recorder's segment
boundaries (`request_keyframe`): the old layer stops there, the new one starts on
its keyframe, FFmpeg cuts the segment at that keyframe, and the recorder marks the
segment that starts with the new SPS `#EXT-X-DISCONTINUITY` (tsinfo). It moves up
to a better layer once that layer has flowed for `UPGRADE_STEADY_S`, and down
only when its layer stops (then the video waits for the next boundary).

H.264 is copied. VP8 cannot go into MPEG-TS HLS, so a VP8 publish is transcoded to
H.264 by FFmpeg (`VP8_TO_H264`: a fixed 640×360 canvas, so layer changes do not
change the output; the recording then prefers the middle simulcast layer). Opus
becomes AAC: browsers cannot play Opus in MPEG-TS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

from tchat.recording.recorder import Recorder
from tchat.recording.service import RecordingService
from tchat.recording.source import RtpStream, SdpSource, free_rtp_port
from tchat.recording.synthetic import wait_udp_listener
from tchat.services import Services, require
from tchat.sfu import sdp
from tchat.sfu.rtp import RtpError, keyframe_detector, payload_bounds
from tchat.sfu.tap import Tap, taps_of
from tchat.sfu.worker import Peer, SfuWorker

log = logging.getLogger("tchat.sfu.recording")

# by lower-case mime (encoding names are case-insensitive): the rtpmap FFmpeg reads
RECORDABLE = {"video/h264": "H264", "video/vp8": "VP8", "audio/opus": "opus"}
UPGRADE_STEADY_S = 2.0  # a better layer flows this long before the recording moves to it
START_STEADY_S = 1.0  # the first layer: the best one flowing this long, if there is one
START_FALLBACK_S = 3.0  # no whole keyframe of the starting layer by then: a lower one
AUDIO_WAIT_S = 3.0  # audio waits this long for the video's first keyframe, then goes alone
TICK_S = 0.25  # how often the sink looks at which layers flow
FLOWING_S = 0.5  # a layer silent this long has stopped (for the recording's choice)
GAP_S = 0.1  # no video for longer than this: the media time runs on with the wall clock
LISTEN_TIMEOUT_S = 20.0  # FFmpeg must bind its RTP ports within this (else: no media)
AUDIO_ARGS = ["-c:a", "aac", "-b:a", "128k"]
# VP8 → H.264 for HLS, on a fixed 640×360 canvas (letterboxed): a layer change or a
# publisher's resolution change never changes the encoder's size, and the CPU stays
# small on a 2-core machine (docs/recording.md has the cost per recording-minute).
# A keyframe every second so segments cut near their plan.
VP8_CANVAS = (640, 360)
VP8_TO_H264 = [
    "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
    "-crf", "23", "-maxrate", "1500k", "-bufsize", "3000k", "-pix_fmt", "yuv420p",
    "-vf", "scale={0}:{1}:force_original_aspect_ratio=decrease,"
    "pad={0}:{1}:(ow-iw)/2:(oh-ih)/2,setsar=1".format(*VP8_CANVAS),
    "-force_key_frames", "expr:gte(t,n_forced*1)",
    # frames keep their RTP times: without this FFmpeg assumes a constant rate and
    # duplicates frames by the thousand (the RTP clock is 90 kHz)
    "-fps_mode", "passthrough",
]  # fmt: skip


def rtp_stream(media: sdp.Media, port: int) -> RtpStream | None:
    """The SDP description of one negotiated media, or None if it cannot be recorded."""
    codec = media.codec
    if codec is None or codec.mime.lower() not in RECORDABLE:
        return None
    encoding = f"{RECORDABLE[codec.mime.lower()]}/{codec.clock_rate}"
    if media.kind == "audio":
        encoding += f"/{codec.channels or 2}"
    fmtp = ";".join(f"{k}={v}" for k, v in codec.fmtp)
    return RtpStream(media.kind, port, codec.payload_type, encoding, fmtp)


def codec_args(streams: list[RtpStream]) -> list[str]:
    """FFmpeg's output codecs: H.264 copied, VP8 transcoded, Opus → AAC."""
    video = next((s for s in streams if s.kind == "video"), None)
    args = ["-c:v", "copy"]
    if video is not None and video.encoding.startswith("VP8/"):
        args = list(VP8_TO_H264)
    if any(s.kind == "audio" for s in streams):
        args += AUDIO_ARGS
    return args


@dataclass
class LayerPlan:
    """Which simulcast layer the recording takes, sans I/O (layers by index, 0 lowest).

    `tick(flowing, now)` with the layers flowing now; `start(now)` picks the first
    layer; `at_boundary()` returns the layer to move to at a segment boundary, if any.
    A layer counts as steady once it has flowed without a break for `steady_s`: the
    recording starts on the best steady layer (else the best flowing), moves up only to
    a steady one, and once its own layer has stopped it moves down even if that layer
    flickers back (an uplink that cannot carry it turns it on and off).
    """

    steady_s: float = UPGRADE_STEADY_S
    start_steady_s: float = START_STEADY_S
    max_layer: int = 2  # preferred at most (a transcoded VP8 publish: the middle layer)
    current: int = -1
    pending: int | None = None
    live_since: dict[int, float] = field(default_factory=dict)

    def _best(self, layers: list[int]) -> int | None:
        under = [i for i in layers if i <= self.max_layer]
        return max(under) if under else min(layers) if layers else None

    def _steady(self, now: float, for_s: float) -> list[int]:
        return [i for i, t in self.live_since.items() if now - t >= for_s]

    def tick(self, flowing: list[int], now: float) -> None:
        self.live_since = {i: self.live_since.get(i, now) for i in flowing}
        if self.current < 0:
            return
        steady = self._steady(now, self.steady_s)
        since = self.live_since.get(self.current)
        down = self.pending is not None and self.pending < self.current
        if since is None or (down and now - since < self.steady_s):
            others = [i for i in self.live_since if i != self.current]
            target = self._best([i for i in steady if i != self.current])
            self.pending = target if target is not None else self._best(others)
            return
        best = self._best(steady)
        self.pending = best if best is not None and best > self.current else None

    def start(self, now: float) -> int | None:
        """The layer the recording starts on (None: nothing flows yet)."""
        best = self._best(self._steady(now, self.start_steady_s))
        if best is None:
            best = self._best(list(self.live_since))
        if best is None:
            return None
        self.current = best
        self.pending = None
        return self.current

    def at_boundary(self) -> int | None:
        if self.pending is None or self.pending == self.current:
            return None
        self.current, self.pending = self.pending, None
        return self.current


class FrameGate:
    """The recorded video goes to FFmpeg a whole frame at a time, and after a loss not
    again before a keyframe. A frame missing packets is a corrupt access unit in the
    HLS (FFmpeg copies it), and Chrome's decoder stops an hls.js replay at it: seen on a
    400 kbit/s uplink, playback stuck at 0.24 s of a 19 s recording. Costs the recording
    one frame of delay; the numbering FFmpeg sees stays continuous over what is dropped."""

    MAX_FRAME_PACKETS = 1024

    def __init__(self, is_keyframe_start: Callable[[bytes], bool]) -> None:
        self.is_keyframe_start = is_keyframe_start
        self.frame: list[bytearray] = []
        self.frame_ts = -1
        self.next_seq = -1
        self.waiting = False  # for a keyframe, after a loss
        self.dropped = 0  # packets held back so far: taken out of FFmpeg's numbering
        self.markers = False  # the sender marks frame ends (RFC 6184, 7741 say it must)

    def push(self, data: bytes) -> tuple[list[bytearray], bool]:
        """(packets to send now, whether a loss was found here)."""
        seq = (data[2] << 8) | data[3]
        ts = int.from_bytes(data[4:8], "big")
        missing = 0
        if self.next_seq >= 0 and seq != self.next_seq:
            missing = (seq - self.next_seq) & 0xFFFF
            if missing >= 0x8000:
                return [], False  # late or repeated: its frame went out or was dropped
        self.next_seq = (seq + 1) & 0xFFFF
        out: list[bytearray] = []
        lost = bool(missing) or len(self.frame) >= self.MAX_FRAME_PACKETS
        if self.frame and ts != self.frame_ts and not lost:
            if not self.markers:
                out = self._release()  # a sender that sets no markers: frames end so
            elif not self._keyframe_start(data):
                lost = True  # its end never came
            else:  # a layer switch cut it: the new layer's keyframe follows at once
                self.dropped += len(self.frame)
                self.frame = []
        if lost:  # the frame being gathered is broken: none of it goes out
            self.dropped += len(self.frame) + missing
            self.frame, self.waiting = [], True
        if self.waiting:
            if not self._keyframe_start(data):
                self.dropped += 1
                return out, lost
            self.waiting = False
        self.frame_ts = ts
        self.frame.append(bytearray(data))
        if data[1] & 0x80:  # marker: the frame is whole
            self.markers = True
            out += self._release()
        return out, lost

    def _keyframe_start(self, data: bytes) -> bool:
        try:
            start, end = payload_bounds(data)
        except RtpError:
            return False
        return self.is_keyframe_start(data[start:end])

    def _release(self) -> list[bytearray]:
        frame, self.frame = self.frame, []
        for pkt in frame:
            seq = (((pkt[2] << 8) | pkt[3]) - self.dropped) & 0xFFFF
            pkt[2], pkt[3] = seq >> 8, seq & 0xFF
        return frame


@dataclass(eq=False)
class RecorderSink:
    """The loopback RTP copies of one publisher's tracks."""

    clock: Callable[[], float]  # the worker's clock (the Track's PLI limit runs on it)
    room: str = ""
    rids: list[str] = field(default_factory=list)
    tracks: dict[str, Tap] = field(default_factory=dict)
    sock: socket.socket | None = None
    plan: LayerPlan = field(default_factory=LayerPlan)
    sent: int = 0
    errors: int = 0
    gaps: int = 0  # holes in the recorded video the SFU could not repair
    asks: int = 0  # keyframes asked for (each rate-limited by the track)
    enabled_at: float | None = None  # worker clock: FFmpeg listens, media may flow
    media_started: float | None = None  # wall clock of the first packet FFmpeg got
    layers: list[tuple[float, str]] = field(default_factory=list)  # (s since start, rid)
    gate: FrameGate | None = None  # the video's (attach)
    _layer: int = -1
    _layer_since: float = 0.0  # worker clock: the video was last sent to a layer
    _audio_open: bool = False
    # FFmpeg's media timeline: the first and the last video RTP timestamp sent (extended)
    _ts_first: int = -1
    _ts_last: int = -1
    _ts_at: float = 0.0  # worker clock when the last video packet went out
    _clock_rate: int = 90000

    @classmethod
    def attach(
        cls,
        peer: Peer,
        clock: Callable[[], float],
        port_of: Callable[[], int] = free_rtp_port,
    ) -> tuple[RecorderSink, list[RtpStream]]:
        """A tap per recordable track of `peer` (nothing flows until `enable`)."""
        sink = cls(clock, room=peer.room.name)
        now = clock()
        streams: list[RtpStream] = []

        def pick(media: sdp.Media) -> tuple[int, Callable[[bytes], None]] | None:
            stream = rtp_stream(media, port_of())
            if stream is None:
                log.warning(
                    "not recording %s of room %s: %s cannot go into HLS",
                    media.kind,
                    peer.room.name,
                    media.codec.mime if media.codec else "no codec",
                )
                return None
            streams.append(stream)
            target = ("127.0.0.1", stream.port)
            return stream.payload_type, partial(
                sink._send, target=target, video=media.kind == "video"
            )

        for tap, stream in zip(taps_of(peer, pick), streams, strict=True):
            if tap.kind == "video":  # paused until FFmpeg listens
                sink.gate = FrameGate(keyframe_detector(tap.mime))
                sink.rids = tap.rids or ["-"]
                sink._clock_rate = tap.clock_rate
                if stream.encoding.startswith("VP8/") and len(tap.rids) > 1:
                    # transcoded to 640×360: decoding a bigger layer is CPU for nothing
                    sink.plan.max_layer = len(tap.rids) - 2
            sink.tracks[tap.kind] = tap
        if streams:
            sink.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.sock.setblocking(False)
            sink.sock.bind(("127.0.0.1", 0))
            for tap in sink.tracks.values():
                tap.start(now)
        return sink, streams

    # -- the recorder's side -----------------------------------------------------------
    def enable(self, now: float) -> None:
        """FFmpeg listens: start the video on the best layer flowing (audio follows it)."""
        self.enabled_at = now
        self.tick(now)

    def restart(self, now: float) -> None:
        """A new FFmpeg run: nothing until it listens, then a fresh start on a keyframe."""
        self.enabled_at = self.media_started = None
        self._audio_open = False
        self._video_seq = self._ts_first = self._ts_last = -1
        video = self.tracks.get("video")
        if video is not None:
            video.switch(-1, now)
        self.plan.current, self.plan.pending = -1, None

    def request_keyframe(self, now: float) -> None:
        """The recorder is at a segment boundary: change layer here if the plan says
        so, else ask for a keyframe of the layer being recorded."""
        video = self.tracks.get("video")
        if video is None or self.enabled_at is None:
            return
        layer = self.plan.at_boundary()
        if layer is not None:
            log.info(
                "recording room=%s moves to layer %s at a segment boundary",
                self.room,
                self._rid(layer),
            )
            video.switch(layer, now)
        else:
            self._ask(video, now)

    def _ask(self, video: Tap, now: float) -> None:
        self.asks += 1
        video.want_keyframe(now)

    def tick(self, now: float) -> None:
        """Every TICK_S from the publish on: which layers flow; once FFmpeg listens, the
        first layer, repeated keyframe requests, the audio's wait."""
        video = self.tracks.get("video")
        if video is not None:
            self.plan.tick(video.flowing(now, FLOWING_S), now)
        if self.enabled_at is None:
            return
        if video is None:
            self._audio_open = True
            return
        if self.plan.current < 0:
            layer = self.plan.start(now)
            if layer is not None:
                log.info("recording room=%s starts on layer %s", self.room, self._rid(layer))
                video.switch(layer, now)
                self._layer_since = now
        elif self._ts_first < 0:
            # No video has reached FFmpeg yet, so no segment boundary will come to move
            # at: leave a layer that stopped, or that gave no whole keyframe in
            # START_FALLBACK_S (an uplink too thin for it), for a lower one now.
            pending, current = self.plan.pending, self.plan.current
            layer = self.plan.at_boundary() if pending is not None and pending < current else None
            lower = [i for i in self.plan.live_since if i < current]
            if layer is None and lower and now - self._layer_since >= START_FALLBACK_S:
                layer = self.plan.current = max(lower)
            if layer is not None:
                log.info(
                    "recording room=%s starts on layer %s instead", self.room, self._rid(layer)
                )
                video.switch(layer, now)
                self._layer_since = now
        if video.target >= 0 and (video.layer < 0 or (self.gate is not None and self.gate.waiting)):
            self._ask(video, now)  # still waiting: ask again (rate-limited)
        if not self._audio_open and now - self.enabled_at >= AUDIO_WAIT_S:
            self._audio_open = True  # no video keyframe yet: do not hold the audio back

    def flowing(self, now: float) -> bool:
        """Media arrives on some tapped track (a layer heard lately)."""
        return any(tap.track.available(now) for tap in self.tracks.values())

    def stream_time(self, now: float) -> float:
        """Seconds of video FFmpeg has received, on its timeline (its RTP input starts at
        the first packet's timestamp; 0 until then): a keyframe asked for once this
        passed a segment boundary is stamped after it, so FFmpeg cuts there. During a
        gap the time runs on with the clock, as the next keyframe's rebased one will."""
        if self._ts_first < 0:
            return 0.0
        media = (self._ts_last - self._ts_first) / self._clock_rate
        return media + max(0.0, now - self._ts_at - GAP_S)

    def describe(self) -> str:
        """Where the media stands, for a recording that got none (the recorder logs it)."""
        now = self.clock()
        if self.enabled_at is None:
            return "FFmpeg not listening yet"
        parts = [f"FFmpeg listening {now - self.enabled_at:.1f}s"]
        video = self.tracks.get("video")
        if video is not None:
            flowing = ",".join(self._rid(i) for i in sorted(self.plan.live_since)) or "none"
            gate = self.gate
            parts.append(
                f"video layers flowing {flowing}, recording {self._rid(self.plan.current)}"
                f" (tap on {self._rid(video.layer)}, pinned {self._rid(video.target)}),"
                f" {'sent' if self._ts_first >= 0 else 'none sent'}, {self.gaps} gaps,"
                f" {gate.dropped if gate else 0} held back"
                f"{', waiting for a keyframe' if gate and gate.waiting else ''},"
                f" {self.asks} keyframe asks"
            )
        parts.append(f"audio {'open' if self._audio_open else 'held'}")
        parts.append(f"{self.sent} packets to FFmpeg, {self.errors} send errors")
        return "; ".join(parts)

    def _rid(self, layer: int) -> str:
        return self.rids[layer] if 0 <= layer < len(self.rids) else str(layer)

    # -- per packet --------------------------------------------------------------------
    def _send(self, data: bytes, *, target: tuple[str, int], video: bool) -> None:
        assert self.sock is not None
        if self.enabled_at is None:
            return
        if not video:
            if self._audio_open:  # audio starts with the video's first keyframe
                self._out(data, target)
            return
        tap = self.tracks["video"]
        if tap.layer != self._layer:
            self._layer_changed(tap.layer)
        assert self.gate is not None
        frame, lost = self.gate.push(data)
        if lost:
            # The numbering is continuous, so a hole is loss upstream that NACKs did not
            # repair: nothing until a keyframe, asked for now.
            self.gaps += 1
            self._ask(tap, self.clock())
        for pkt in frame:
            self._audio_open = True
            ts = int.from_bytes(pkt[4:8], "big")
            if self._ts_first < 0:
                self._ts_first = self._ts_last = ts
            else:
                delta = (ts - self._ts_last) & 0xFFFFFFFF
                if delta < 0x80000000:  # forward (a late packet does not move it back)
                    self._ts_last += delta
            self._ts_at = self.clock()
            self._out(pkt, target)

    def _out(self, data: bytes | bytearray, target: tuple[str, int]) -> None:
        assert self.sock is not None
        if self.media_started is None:
            self.media_started = time.time()
        try:
            self.sock.sendto(data, target)
            self.sent += 1
        except OSError:  # FFmpeg gone, or a full buffer: drop
            self.errors += 1

    def _layer_changed(self, layer: int) -> None:
        self._layer = layer
        at = time.time() - self.media_started if self.media_started is not None else 0.0
        self.layers.append((round(at, 3), self._rid(layer)))
        log.info("recording room=%s video layer %s from %.2fs", self.room, self._rid(layer), at)

    def detach(self) -> None:
        for tap in self.tracks.values():
            tap.close()
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
        self.keys: dict[str, list[str]] = {}  # the same: what the recording's callbacks hold
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __call__(self, peer: Peer, live: bool) -> None:
        lost = peer.resumes
        if live and lost is not None and lost.id in self.active:
            self._resume(lost, peer)
        elif live:
            self._start(peer)
        else:
            self._stop(peer.id)

    def _resume(self, lost: Peer, peer: Peer) -> None:
        """The room's publisher came back (SFU grace period): the same recording goes on,
        from a new FFmpeg run that starts a discontinuity. The sink's taps are on the
        room's tracks, which the new publisher feeds."""
        entry = self.active.pop(lost.id)
        self.active[peer.id] = entry
        self.keys[peer.id] = key = self.keys.pop(lost.id)
        key[0] = peer.id
        if (task := self._tasks.pop(lost.id, None)) is not None:
            self._tasks[peer.id] = task
        log.info("recording room=%s id=%s resumes (publisher back)", peer.room.name, entry[1].id)
        entry[0].restart(self.worker.now())  # nothing more to the closing run
        entry[1].cut()

    def _start(self, peer: Peer) -> None:
        worker = self.worker
        sink, streams = RecorderSink.attach(peer, worker.now)
        if not streams:
            return
        sdp_path = self.service.workdir / f"{peer.id}.sdp"
        ports = [st.port for st in streams]
        key = [peer.id]  # the publisher it follows: another one if the stream resumes
        try:
            source = SdpSource(
                sdp_path,
                streams,
                keyframe=lambda: sink.request_keyframe(worker.now()),
                codec_args=codec_args(streams),
                stream_time=lambda: sink.stream_time(worker.now()),
                on_run=lambda: self._gate(key[0], sink, ports),
                describe=sink.describe,
            )
            recorder = self.service.start(peer.room.name, source)
        except Exception:
            sink.detach()  # no recording: stop copying the stream
            raise
        self.active[peer.id] = (sink, recorder)
        self.keys[peer.id] = key
        # a recording that ends on its own (FFmpeg failed for good) stops the copying too
        recorder.on_done(lambda _: self._stop(key[0]))
        # FFmpeg rereads the SDP file on each restart: it goes when the recording is done
        recorder.on_done(lambda _: sdp_path.unlink(missing_ok=True))
        log.info(
            "recording room=%s id=%s streams=%s",
            peer.room.name,
            recorder.id,
            ",".join(f"{s.kind}:{s.encoding}@{s.port}" for s in streams),
        )

    def _gate(self, peer_id: str, sink: RecorderSink, ports: list[int]) -> None:
        """A (new) FFmpeg run started: hold the media until it listens, then let it flow."""
        sink.restart(self.worker.now())
        old = self._tasks.pop(peer_id, None)
        if old is not None:
            old.cancel()
        self._tasks[peer_id] = asyncio.get_running_loop().create_task(
            self._run_sink(sink, ports), name=f"recording-sink-{peer_id}"
        )

    async def _run_sink(self, sink: RecorderSink, ports: list[int]) -> None:
        ticks = asyncio.create_task(self._tick(sink))  # the layers' history starts now
        try:
            # every stream's port: FFmpeg binds them one after the other (audio first, as
            # the SDP lists them), and a keyframe sent before the video's is bound is lost
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LISTEN_TIMEOUT_S
            for port in ports:
                if not await wait_udp_listener(port, max(0.0, deadline - loop.time())):
                    log.warning("recording room=%s: FFmpeg did not listen on %d", sink.room, port)
                    return  # the recorder's no-media timeout reports it
            sink.enable(self.worker.now())
            await ticks
        finally:
            ticks.cancel()

    async def _tick(self, sink: RecorderSink) -> None:
        while sink.tracks:
            now = self.worker.now()
            sink.tick(now)
            entry = next((e for e in self.active.values() if e[0] is sink), None)
            if entry is not None and entry[1].idle and sink.flowing(now):
                entry[1].cut()  # media again after a stall: a new FFmpeg run goes on
            await asyncio.sleep(TICK_S)

    def _stop(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
        self.keys.pop(key, None)
        entry = self.active.pop(key, None)
        if entry is None:
            return
        sink, recorder = entry
        if sink.layers:
            log.info(
                "recording room=%s id=%s video layers %s",
                recorder.room,
                recorder.id,
                ", ".join(f"{rid}@{t:.1f}s" for t, rid in sink.layers),
            )
        sink.detach()
        recorder.stop()

    def recording_of(self, room: str) -> str | None:
        """The id of the room's live recording, if any."""
        for sink_recorder in self.active.values():
            if sink_recorder[1].room == room:
                return sink_recorder[1].id
        return None

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


@asynccontextmanager
async def running(services: Services) -> AsyncIterator[None]:
    """Wire the SFU worker to the recording service (both must already be running)."""
    # with NUM_SFU_INSTANCES > 1 there is no in-process worker: each instance
    # process records the rooms it originates (sfu/cluster/instance.py)
    if not services.settings.sfu_record or services.sfu is None:
        yield
        return
    worker = services.sfu
    live = LiveRecording(worker, require(services.recording, "recording"))
    worker.publish_listeners.append(live)
    services.live_recording = live
    try:
        yield
    finally:
        services.live_recording = None
        await live.close()
