"""The T069 viewer: one adaptive WHEP viewer that measures what it receives.

Runs as `python -m tchat.perf.latency_viewer …` (the suite starts it inside a network
namespace behind a shaped link, `ip netns exec`). It is a `ClientPeer` that offers
transport-wide CC and playout delay (as Chrome does), sends TWCC feedback from real
arrival times, decrypts every packet and reads the publisher's stamp (layer, packets
in the frame, send time; `tchat.perf.sfu_load.STAMP`). Same host, same clock: latency
is receive time minus send time.

The playout buffer is evaluated on the recorded frames: a video frame is due at its
send time plus the target delay the SFU signalled (playout-delay extension, the
tier's target) when it arrived; a frame not complete by then is dropped as late, and
each run of late frames is one rebuffer event (the buffer ran empty). Prints one JSON
line with the samples and the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tchat.perf.results import print_json_line
from tchat.perf.sfu_load import AUDIO_LAYER, read_stamp, whep_join
from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu.rtp import h264_keyframe_start

DEFAULT_TARGET_MS = 200  # before the first playout-delay extension arrives


@dataclass
class Frame:
    layer: int
    sent: float
    expected: int
    received: int = 0
    done: float = 0.0  # arrival of its last packet
    target_ms: int = DEFAULT_TARGET_MS


@dataclass
class Recorder:
    """Per-packet latency samples and per-frame completion, relative to `t0` (wall)."""

    t0: float
    peer: ClientPeer | None = None
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # t, ms, layer
    frames: dict[tuple[int, float], Frame] = field(default_factory=dict)
    unstamped: int = 0

    def on_media(self, ssrc: int, seq: int, marker: bool, payload: bytes, arrival: float) -> None:
        stamp = read_stamp(payload)
        if stamp is None:
            self.unstamped += 1
            return
        layer, count, sent = stamp
        self.samples.append((arrival - self.t0, 1000.0 * (arrival - sent), layer))
        if layer == AUDIO_LAYER:
            return
        key = (layer, sent)
        frame = self.frames.get(key)
        if frame is None:
            frame = self.frames[key] = Frame(layer, sent, count)
        frame.received += 1
        frame.done = max(frame.done, arrival)
        if self.peer is not None and self.peer.playout_max_ms:
            frame.target_ms = self.peer.playout_max_ms

    def playout(self) -> dict[str, Any]:
        """Late frames and rebuffer events (runs of late frames) in send order."""
        late = rebuffers = 0
        events: list[float] = []
        late_times: list[float] = []
        previous_late = False
        for frame in sorted(self.frames.values(), key=lambda f: f.sent):
            due = frame.sent + frame.target_ms / 1000.0
            is_late = frame.received < frame.expected or frame.done > due
            if is_late:
                late += 1
                late_times.append(round(frame.sent - self.t0, 3))
                if not previous_late:
                    rebuffers += 1
                    events.append(round(frame.sent - self.t0, 3))
            previous_late = is_late
        return {
            "frames": len(self.frames),
            "late_frames": late,
            "rebuffer_events": rebuffers,
            "rebuffer_times_s": events,
            "late_times_s": late_times,
        }


async def run(
    url: str, room: str, token: str, bind: str, duration_s: float, layer: str
) -> dict[str, Any]:
    rec = Recorder(t0=time.time())
    mono0 = time.monotonic()
    peer = ClientPeer(
        Identity.create(),
        decrypt=True,
        keyframe_test=h264_keyframe_start,
        adaptive=True,
        on_media=rec.on_media,
    )
    rec.peer = peer
    await peer.open(bind)
    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        location = await whep_join(client, room, token, peer, layer, 15)
        playout: list[tuple[float, int]] = []
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            await asyncio.sleep(0.25)
            if peer.playout_max_ms is not None and (
                not playout or playout[-1][1] != peer.playout_max_ms
            ):
                playout.append((round(time.time() - rec.t0, 3), peer.playout_max_ms))
        try:
            await client.delete(location, headers={"authorization": f"Bearer {token}"})
        except httpx.HTTPError:
            pass
    peer.close()
    streams = peer.stats.streams.values()
    expected = sum(s.expected() for s in streams)
    lost = sum(s.lost() for s in streams)
    return {
        "t0_wall": rec.t0,
        "t0_mono": mono0,
        "connected_s": peer.stats.connected - mono0 if peer.stats.connected else None,
        "first_media_s": peer.stats.first_media - mono0 if peer.stats.first_media else None,
        "samples": [[round(t, 4), round(ms, 2), lay] for t, ms, lay in rec.samples],
        "playout_target_ms": playout,
        "loss_pct": 100.0 * lost / expected if expected else None,
        "packets_expected": expected,
        "padding_packets": peer.stats.padding,
        "unstamped": rec.unstamped,
        "decrypt_errors": peer.stats.decrypt_errors,
        **rec.playout(),
    }


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tchat.perf.latency_viewer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--bind", default="0.0.0.0", help="local address of the UDP socket")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--layer", default="high", help="the user's cap: low, mid or high")
    args = parser.parse_args()
    import uvloop

    out = uvloop.run(run(args.url, args.room, args.token, args.bind, args.duration, args.layer))
    print_json_line(out)


if __name__ == "__main__":
    _main()
