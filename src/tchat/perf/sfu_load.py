"""The T068 load generator: a synthetic simulcast publisher and swarms of real viewers.

`SyntheticPublisher` publishes via WHIP the prepared H.264 layers (+ Opus) in real
time, restarting a layer at its IDR when the SFU sends a PLI. `run_viewers` opens
WHEP sessions with bounded concurrency; every viewer completes ICE and DTLS and
receives SRTP, one in `sample_every` also decrypts and verifies. `python -m
tchat.perf.sfu_load viewers …` runs a swarm in its own process and prints one JSON
line, so a large run spreads the generator over several processes.

Where the native extension is built (`SFU_FASTPATH`, as the SFU's fan-out), a
viewer's socket goes, once its media flows, to a `tchat_fastpath.Swarm`: one native
thread reads every such socket with epoll + recvmmsg and counts what the Python
viewer counts — a sampled viewer's SRTP decryption and payload checks included
(tests/integration/test_swarm_receive.py holds the two to the same figures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tchat.perf.results import percentile, print_json_line
from tchat.perf.sfu_media import FPS, OPUS_FRAME_TS, PreparedMedia, prepare
from tchat.perf.webrtc_peer import ClientPeer, Identity, PeerStats, rtp_header
from tchat.sfu import fastpath
from tchat.sfu.rtp import h264_keyframe_start

VIDEO_PT, AUDIO_PT = 102, 111
PLI_MIN_INTERVAL_S = 0.3
MEDIA_CACHE = Path(os.environ.get("TCHAT_PERF_MEDIA", ".tchat/perf-media"))


STAMP_MAGIC = b"\x7c\x1a"
# magic, layer index (255: audio), packets of this frame, send time (time.time())
STAMP = struct.Struct("!2sBHd")
AUDIO_LAYER = 255


def read_stamp(payload: bytes) -> tuple[int, int, float] | None:
    """(layer, packets in its frame, send time) from a stamped payload's trailer, or None."""
    if len(payload) < STAMP.size or payload[-STAMP.size : -STAMP.size + 2] != STAMP_MAGIC:
        return None
    _, layer, count, sent = STAMP.unpack_from(payload, len(payload) - STAMP.size)
    return layer, count, sent


class SyntheticPublisher:
    def __init__(
        self,
        identity: Identity,
        media: PreparedMedia,
        rids: list[str],
        stamp: bool = False,
        bind: str = "127.0.0.1",
        start_after: dict[str, float] | None = None,
        frame_gap_s: float = 0.0,
        padding_per_frame: int = 0,
    ) -> None:
        # stamp: append (layer, send time) to every payload, for publish-to-receive latency
        # at viewers on this host (one clock); the H.264 is then no longer decodable
        self.stamp = stamp
        # frame_gap_s: send each frame's packets in two halves this far apart, as a paced
        # sender (Chrome's) spreads a frame: the SFU's timers then run inside frames
        self.frame_gap_s = frame_gap_s
        # padding_per_frame: after each frame, that many padding-only packets on the
        # layer's numbering, as Chrome pads its simulcast layers to probe its uplink
        self.padding_per_frame = padding_per_frame
        self.bind = bind
        self.media = media
        self.rids = rids  # lowest first
        # seconds after the first packet before a layer starts (rids not given: at once;
        # float("inf"): offered but never sent, like a top layer the uplink cannot carry)
        self.start_after = start_after or {}
        self.peer = ClientPeer(identity, on_pli=self._on_pli)
        self.ssrcs = {rid: (0x10000 + i) * 7919 for i, rid in enumerate(rids)}
        self.audio_ssrc = 0x5EED
        self.cursor = dict.fromkeys(rids, 0)
        self.restarts = dict.fromkeys(rids, 0)
        self._pli_at = dict.fromkeys(rids, -1.0)
        self.location = ""
        self.token = ""  # the one it published with: only it may end the session
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def _on_pli(self, ssrc: int) -> None:
        now = time.monotonic()
        for rid, s in self.ssrcs.items():
            if s == ssrc and now - self._pli_at[rid] >= PLI_MIN_INTERVAL_S:
                self._pli_at[rid] = now
                self.cursor[rid] = 0  # frame 0 is an IDR: the keyframe the SFU asked for
                self.restarts[rid] += 1

    async def start(self, client: httpx.AsyncClient, room: str, token: str) -> None:
        await self.peer.open(self.bind)
        offer = self.peer.offer(rids=list(reversed(self.rids)), publish=True)
        resp = await client.post(
            f"/whip/{room}",
            content=offer,
            headers={"authorization": f"Bearer {token}", "content-type": "application/sdp"},
        )
        if resp.status_code != 201:
            raise RuntimeError(f"WHIP failed: {resp.status_code} {resp.text}")
        self.location = resp.headers["location"]
        self.token = token
        await self.peer.connect(resp.text)
        self._task = asyncio.create_task(self._send_loop())

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        seq = {rid: 0 for rid in self.rids}
        aseq = 0
        frame_n = 0
        audio_n = 0
        audio = self.media.audio
        while not self.peer.closed:
            next_video = t0 + frame_n / FPS
            next_audio = t0 + audio_n * 0.02
            due = min(next_video, next_audio)
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            stamp = STAMP.pack(STAMP_MAGIC, AUDIO_LAYER, 1, time.time()) if self.stamp else b""
            while t0 + audio_n * 0.02 <= now:
                pkt = audio[audio_n % len(audio)]
                hdr = rtp_header(
                    AUDIO_PT, aseq & 0xFFFF, audio_n * OPUS_FRAME_TS, self.audio_ssrc, True
                )
                self.peer.send_rtp(hdr + pkt + stamp)
                aseq += 1
                audio_n += 1
                self.sent += 1
            while t0 + frame_n / FPS <= now:
                ts = (frame_n * 90000 // FPS) & 0xFFFFFFFF
                rest: list[bytes] = []  # second halves when frames are paced
                for index, rid in enumerate(self.rids):
                    if frame_n / FPS < self.start_after.get(rid, 0.0):
                        continue
                    frames = self.media.video[rid]
                    frame = frames[self.cursor[rid] % len(frames)]
                    if self.stamp:
                        stamp = STAMP.pack(STAMP_MAGIC, index, len(frame.payloads), time.time())
                    self.cursor[rid] += 1
                    last = len(frame.payloads) - 1
                    half = (last + 1) // 2 if self.frame_gap_s else last + 1
                    for i, payload in enumerate(frame.payloads):
                        s = seq[rid]
                        hdr = rtp_header(VIDEO_PT, s & 0xFFFF, ts, self.ssrcs[rid], i == last, rid)
                        if i < half:
                            self.peer.send_rtp(hdr + payload + stamp)
                        else:
                            rest.append(hdr + payload + stamp)
                        seq[rid] = s + 1
                        self.sent += 1
                if rest:
                    await asyncio.sleep(self.frame_gap_s)
                    for pkt in rest:
                        self.peer.send_rtp(pkt)
                if self.padding_per_frame:  # one call a frame, none when not padding
                    self._send_padding(seq, ts)
                frame_n += 1

    def _send_padding(self, seq: dict[str, int], ts: int) -> None:
        """After a frame, `padding_per_frame` padding-only packets on every layer."""
        for rid in self.rids:
            for _ in range(self.padding_per_frame):
                s = seq[rid]
                head = rtp_header(VIDEO_PT, s & 0xFFFF, ts, self.ssrcs[rid], False, rid)
                # padding only (P bit): 200 bytes, the last one says how many
                pad = bytes([head[0] | 0x20]) + head[1:] + bytes(199) + b"\xc8"
                self.peer.send_rtp(pad)
                seq[rid] = s + 1
                self.sent += 1

    async def pause(self) -> None:
        """Stop sending media, keeping the session (viewers drain what is in flight)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def stop(self, client: httpx.AsyncClient, token: str = "") -> None:
        """DELETE the session (with the publishing token: a session is ended only by
        the token that created it), then close."""
        if self.location:
            bearer = self.token or token
            try:
                await client.delete(self.location, headers={"authorization": f"Bearer {bearer}"})
            except httpx.HTTPError:
                pass
        self.peer.close()
        if self._task is not None:
            self._task.cancel()


async def whep_join(
    client: httpx.AsyncClient,
    room: str,
    token: str,
    peer: ClientPeer,
    layer: str,
    timeout_s: float = 10.0,
) -> str:
    """WHEP the opened `peer` into `room` at `layer` and connect it (ICE, DTLS) within
    `timeout_s`; returns the session URL. A refusal raises RuntimeError (status, body)."""
    resp = await client.post(
        f"/whep/{room}",
        params={"layer": layer},
        content=peer.offer(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/sdp"},
    )
    if resp.status_code != 201:
        raise RuntimeError(f"WHEP {resp.status_code}: {resp.text[:300]}")
    await peer.connect(resp.text, timeout_s=timeout_s)
    return str(resp.headers["location"])


class ArrivalProbe(ClientPeer):
    """A decrypting viewer noting when each payload of `watch` arrives (T068 cluster runs
    compare a viewer on the origin with one on an edge: the relay's extra latency)."""

    def __init__(self, identity: Identity, watch: set[int]) -> None:
        super().__init__(identity, decrypt=True, keep_packets=True)
        self.watch = watch
        self.arrivals: dict[int, list[float]] = {}

    def _rtp(self, data: bytes) -> None:
        t = time.monotonic()
        super()._rtp(data)
        if self.packets:
            h = hash(self.packets[-1][2])
            self.packets.clear()
            if h in self.watch:
                self.arrivals.setdefault(h, []).append(t)


def extra_latency_ms(near: ArrivalProbe, far: ArrivalProbe, window_s: float = 0.1) -> list[float]:
    """Per payload `far` received: its arrival minus `near`'s nearest arrival of the same
    payload (looped media repeats payloads; pairs further apart than `window_s` are not
    the same send)."""
    out = []
    for h, times in far.arrivals.items():
        ref = near.arrivals.get(h)
        if not ref:
            continue
        for t in times:
            d = min((t - r for r in ref), key=abs)
            if abs(d) <= window_s:
                out.append(1000.0 * d)
    return out


@dataclass
class ViewerResult:
    ok: bool
    error: str = ""
    connect_s: float | None = None  # WHEP POST → first media packet
    sampled: bool = False
    stats: PeerStats = field(default_factory=PeerStats)


async def open_viewer(
    client: httpx.AsyncClient,
    identity: Identity,
    room: str,
    token: str,
    layer: str,
    decrypt: bool,
    known: set[int] | None,
    first_media_timeout_s: float,
    swarm: Any = None,
) -> tuple[ClientPeer, ViewerResult]:
    """`swarm`: a native `Swarm` the viewer's socket is handed to once its media flows
    (a sampled one's decryption and checks go on there too)."""
    peer = ClientPeer(
        identity, decrypt=decrypt, known_payloads=known, keyframe_test=h264_keyframe_start
    )
    result = ViewerResult(ok=False, sampled=decrypt, stats=peer.stats)
    native = swarm is not None
    try:
        await peer.open(own_socket=native)
        start = time.monotonic()
        peer.stats.started = start
        await whep_join(client, room, token, peer, layer, first_media_timeout_s)
        remaining = start + first_media_timeout_s - time.monotonic()
        try:
            await asyncio.wait_for(peer.media_started.wait(), max(0.01, remaining))
        except TimeoutError:
            raise TimeoutError("no media within the timeout") from None
        if native:
            peer.hand_off(swarm)
        result.ok = True
        result.connect_s = peer.stats.first_media - start
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return peer, result


async def run_viewers(
    base_url: str,
    room: str,
    token: str,
    count: int,
    hold_s: float,
    sample_every: int = 20,
    concurrency: int = 16,
    layer: str = "mid",
    first_media_timeout_s: float = 15.0,
    on_connected: Any = None,
    arrival_span_s: float = 0.0,
    swarm: Any = None,
) -> tuple[list[ViewerResult], dict[str, float]]:
    """Open `count` viewers, hold them `hold_s` after the last joined, close them.
    `arrival_span_s` > 0: viewer i arrives (its WHEP request starts, `concurrency` at most
    in flight) at i/count of that span after the start, a join storm's arrivals.
    `swarm`: a native `Swarm` that reads the viewers' sockets (`receive_path`)."""
    identity = Identity.create()
    media = prepare(MEDIA_CACHE)
    known = media.known_payloads()
    if swarm is not None:
        swarm.know(media.payloads())  # what its sampled viewers check against
    sem = asyncio.Semaphore(concurrency)
    peers: list[ClientPeer] = []
    results: list[ViewerResult] = []
    # a storm's viewers each on a connection of its own, as different people's browsers
    # are (a pooled keep-alive connection the server times out just as it is reused fails
    # its POST: an artefact of one client standing in for many)
    keepalive = 0 if arrival_span_s > 0 else concurrency
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=keepalive)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as client:

        async def one(i: int) -> None:
            if arrival_span_s > 0:
                await asyncio.sleep(t_start + arrival_span_s * i / count - time.monotonic())
            async with sem:
                peer, res = await open_viewer(
                    client, identity, room, token, layer, i % sample_every == 0, known,
                    first_media_timeout_s, swarm,
                )  # fmt: skip
            peers.append(peer)
            results.append(res)

        t_start = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        t_joined = time.monotonic()
        if on_connected is not None:
            await on_connected()
        marks = {"t_start": t_start, "t_joined": t_joined, **await _hold(peers, hold_s)}
        for peer in peers:
            peer.close()
    return results, marks


async def _hold(peers: list[ClientPeer], hold_s: float) -> dict[str, float]:
    """Hold the viewers `hold_s`; the generator's own cost meanwhile: CPU of the process
    (every thread) and the packets its viewers received."""

    def received() -> int:
        for peer in peers:
            peer.sync()
        return sum(s.received for p in peers for s in p.stats.streams.values())

    cpu_joined, packets_joined = time.process_time(), received()
    await asyncio.sleep(hold_s)
    return {
        "t_end": time.monotonic(), "cpu_joined": cpu_joined, "cpu_end": time.process_time(),
        "packets_joined": packets_joined, "packets_end": received(),
    }  # fmt: skip


def receive_path(mode: str) -> tuple[Any, str]:
    """The swarm's receive path for `SFU_FASTPATH=mode` (the same extension as the SFU's
    fan-out): a native `Swarm` (epoll + recvmmsg in a thread of its own, for every
    viewer once its media flows) or None (each viewer's datagrams through the event
    loop), and which."""
    path = fastpath.choose(mode)
    if path.module is None:
        return None, path.describe()
    return path.module.Swarm(), path.describe()


def summarize(results: list[ViewerResult], join_span_s: float, t_end: float) -> dict[str, Any]:
    """Viewer-side figures over one or more swarms."""
    ok = [r for r in results if r.ok]
    times = [r.connect_s * 1000 for r in ok if r.connect_s is not None]
    expected = lost = received = 0
    gaps = reordered = bad = payloads = decrypt_errors = 0
    not_keyframe_first = 0
    rates_bps: list[float] = []
    rates_pps: list[float] = []
    for r in ok:
        active = t_end - r.stats.first_media  # first media packet until the swarm closed
        v_octets = sum(s.octets for s in r.stats.streams.values())
        v_packets = sum(s.received for s in r.stats.streams.values())
        if active > 0:
            rates_bps.append(8 * v_octets / active)
            rates_pps.append(v_packets / active)
        for s in r.stats.streams.values():
            expected += s.expected()
            lost += s.lost()
            received += s.received
            gaps += s.gaps
            reordered += s.reordered
            bad += s.bad_payloads
            payloads += s.payloads
            if s.keyframe_first is False:
                not_keyframe_first += 1
        decrypt_errors += r.stats.decrypt_errors
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = ":".join(r.error.split(":")[:2])  # e.g. "RuntimeError: WHEP 503"
            errors[key] = errors.get(key, 0) + 1
    return {
        "viewers_attempted": len(results),
        "viewers_connected": len(ok),
        "connected_pct": 100.0 * len(ok) / len(results) if results else 0.0,
        "connection_time_avg_ms": sum(times) / len(times) if times else None,
        "connection_time_p50_ms": percentile(times, 50),
        "connection_time_p95_ms": percentile(times, 95),
        "connection_time_p99_ms": percentile(times, 99),
        "join_rate_per_s": len(ok) / join_span_s if join_span_s > 0 else None,
        "viewer_loss_pct": 100.0 * lost / expected if expected else None,
        "viewer_packets_received": received,
        "viewer_bitrate_bps_avg": sum(rates_bps) / len(rates_bps) if rates_bps else None,
        "viewer_packets_per_s_avg": sum(rates_pps) / len(rates_pps) if rates_pps else None,
        "sampled_viewers": sum(1 for r in ok if r.sampled),
        "sampled_payloads_checked": payloads,
        "sampled_bad_payloads": bad,
        "sampled_seq_gaps": gaps,
        "sampled_reordered": reordered,
        "sampled_decrypt_errors": decrypt_errors,
        "sampled_video_not_starting_on_keyframe": not_keyframe_first,
        "errors": errors,
    }


# -- the SFU under test as a real `tchat serve` process ---------------------------------
# -- one swarm per process -------------------------------------------------------------------
def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tchat.perf.sfu_load")
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("viewers", help="run a swarm of viewers and print one JSON line")
    v.add_argument("--url", required=True)
    v.add_argument("--room", required=True)
    v.add_argument("--token", required=True)
    v.add_argument("--count", type=int, required=True)
    v.add_argument("--hold", type=float, required=True)
    v.add_argument("--sample-every", type=int, default=20)
    v.add_argument("--concurrency", type=int, default=16)
    v.add_argument("--layer", default="mid")
    v.add_argument(
        "--arrival-span", type=float, default=0.0,
        help="spread the viewers' arrivals evenly over this many seconds (a join storm)",
    )  # fmt: skip
    v.add_argument(
        "--receive", choices=fastpath.MODES, default=os.environ.get("SFU_FASTPATH", "auto"),
        help="the viewers' receive path: native (recvmmsg, tchat_fastpath) or python"
        " (default: SFU_FASTPATH, else auto: native when built)",
    )  # fmt: skip
    args = parser.parse_args()
    import uvloop

    async def run() -> tuple[list[ViewerResult], dict[str, float], dict[str, Any]]:
        swarm, path = receive_path(args.receive)
        try:
            results, marks = await run_viewers(
                args.url, args.room, args.token, args.count, args.hold,
                args.sample_every, args.concurrency, args.layer,
                arrival_span_s=args.arrival_span, swarm=swarm,
            )  # fmt: skip
        finally:
            counts = swarm.counters() if swarm is not None else None
            if swarm is not None:
                swarm.close()
        recv: dict[str, Any] = {"path": path}
        if counts is not None:
            recv.update(datagrams=counts[0], recvmmsg_calls=counts[1], read_errors=counts[2])
        return results, marks, recv

    results, marks, recv = uvloop.run(run())
    out = summarize(results, marks["t_joined"] - marks["t_start"], marks["t_end"])
    packets = marks["packets_end"] - marks["packets_joined"]
    recv["generator_cpu_us_per_packet"] = (
        1e6 * (marks["cpu_end"] - marks["cpu_joined"]) / packets if packets else None
    )
    out["receive"] = recv
    out["connect_ms"] = [r.connect_s * 1000 for r in results if r.ok and r.connect_s is not None]
    out["marks"] = marks
    print_json_line(out)


if __name__ == "__main__":
    _main()
