"""A Chromium WHEP viewer for tests: a plain `RTCPeerConnection` page and its getStats().

The page (`WHEP_PAGE`) is the plainest outside WHEP client (RFC 9725): it offers
audio + video recvonly with the browser's defaults, POSTs the offer with `fetch`,
applies the 201's answer and plays the stream in a `<video>`. It is written into a
document of the server's own origin (its /healthz), so tchat needs no test route and
the page's `fetch` is same-origin. `munge` can strip what the browser
offers (`"twcc"`: transport-cc, `"rtx"`: RTX) to compare with and without.

`launch_chromium(netns=…)` starts Debian's Chromium under Playwright, optionally inside
a network namespace (`ip netns exec <ns> chromium …`: Playwright talks to it over
`--remote-debugging-pipe`, whose file descriptors `ip netns exec` passes on), so the
browser's media crosses a shaped veth link (tchat.perf.netlab).

`BrowserViewer.sample()` returns one flat dict of what the viewer perceives
(inbound-rtp video: frames decoded/dropped, freezes, jitter-buffer delay, resolution,
NACKs, losses; retransmissions where Chrome reports them), and `summarize` turns a
series of samples into the figures the latency suite records.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

from tchat.perf.results import percentile

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--autoplay-policy=no-user-gesture-required",
    # a publisher page in the same browser gets the fake camera and microphone
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # headless tabs in the background must not be throttled: they are the viewer
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]

WHEP_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>WHEP viewer</title>
<style>html,body{margin:0;background:#111;color:#eee;font:14px sans-serif}
video{width:640px;height:360px;background:#000;display:block}</style></head>
<body><video id="v" autoplay muted playsinline></video><pre id="s"></pre>
<script>
const strip = (sdp, what) => {
  let lines = sdp.split('\\r\\n');
  if (what.includes('twcc')) {
    lines = lines.filter(l => !l.includes('transport-wide-cc') && !l.endsWith(' transport-cc'));
  }
  if (what.includes('rtx')) {
    const rtx = new Set(lines.filter(l => / rtx\\/\\d+$/.test(l))
      .map(l => l.split(':')[1].split(' ')[0]));
    lines = lines.filter(l => {
      const m = /^a=(rtpmap|fmtp|rtcp-fb):(\\d+)/.exec(l);
      return !(m && rtx.has(m[2]));
    }).map(l => l.startsWith('m=') ? l.split(' ').filter(
      (f, i) => i < 3 || !rtx.has(f)).join(' ') : l);
  }
  return lines.join('\\r\\n');
};
window.watch = async (url, token, munge) => {
  const t0 = performance.now();
  const pc = new RTCPeerConnection();
  window.pc = pc;
  pc.addTransceiver('audio', {direction: 'recvonly'});
  pc.addTransceiver('video', {direction: 'recvonly'});
  const video = document.getElementById('v');
  pc.ontrack = e => { video.srcObject = e.streams[0] || new MediaStream([e.track]); };
  const offer = await pc.createOffer();
  offer.sdp = strip(offer.sdp, munge || []);
  await pc.setLocalDescription(offer);
  await new Promise(r => {
    if (pc.iceGatheringState === 'complete') return r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
    setTimeout(r, 3000);
  });
  const resp = await fetch(url, {method: 'POST', body: pc.localDescription.sdp,
    headers: {'content-type': 'application/sdp', authorization: 'Bearer ' + token}});
  const answer = await resp.text();
  if (resp.status !== 201) throw new Error('WHEP ' + resp.status + ': ' + answer);
  window.location_ = new URL(resp.headers.get('location'), url).href;
  await pc.setRemoteDescription({type: 'answer', sdp: answer});
  return {offer: pc.localDescription.sdp, answer, location: window.location_,
          ms: performance.now() - t0};
};
window.sample = async () => {
  const out = {t: performance.now(), state: pc.connectionState};
  (await pc.getStats()).forEach(s => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      Object.assign(out, {
        frames_decoded: s.framesDecoded || 0, frames_received: s.framesReceived || 0,
        frames_dropped: s.framesDropped || 0, freeze_count: s.freezeCount || 0,
        freezes_s: s.totalFreezesDuration || 0, pause_count: s.pauseCount || 0,
        jb_delay_s: s.jitterBufferDelay || 0, jb_emitted: s.jitterBufferEmittedCount || 0,
        width: s.frameWidth || 0, height: s.frameHeight || 0, fps: s.framesPerSecond || 0,
        packets: s.packetsReceived || 0, lost: s.packetsLost || 0,
        nacks: s.nackCount || 0, plis: s.pliCount || 0, firs: s.firCount || 0,
        keyframes: s.keyFramesDecoded || 0, bytes: s.bytesReceived || 0,
        rtx_packets: s.retransmittedPacketsReceived,
        rtx_bytes: s.retransmittedBytesReceived,
        decoder: s.decoderImplementation || ''});
    } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audio_packets = s.packetsReceived || 0;
    } else if (s.type === 'candidate-pair' && s.nominated) {
      out.rtt_s = s.currentRoundTripTime;
    }
  });
  document.getElementById('s').textContent =
    `${out.width}x${out.height} frames ${out.frames_decoded} freezes ${out.freeze_count}`;
  return out;
};
</script></body></html>
"""


def chromium_executable() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise RuntimeError("chromium is not installed: run `make setup` (scripts/setup-system.sh)")
    return exe


@asynccontextmanager
async def launch_chromium(netns: str | None = None) -> AsyncIterator[Browser]:
    """Headless Chromium under Playwright; inside network namespace `netns` if given."""
    exe = chromium_executable()
    with tempfile.TemporaryDirectory(prefix="tchat-chromium-") as tmp:
        if netns is not None:
            # Playwright runs one executable with its arguments: a two-line wrapper enters
            # the namespace and execs the browser (the debugging pipe's fds pass through)
            wrapper = Path(tmp) / "chromium-in-netns"
            wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} {exe} "$@"\n')
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
            exe = str(wrapper)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=exe, headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield browser
            finally:
                await browser.close()


class BrowserViewer:
    """One WHEP viewer page in `browser`, watching `room` on the server at `origin`."""

    def __init__(self, browser: Browser, origin: str) -> None:
        self.browser = browser
        self.origin = origin.rstrip("/")
        self.page: Page | None = None
        self.samples: list[dict[str, Any]] = []
        self.offer = ""
        self.answer = ""
        self.location = ""
        self.join_ms = 0.0
        self.errors: list[str] = []

    async def open(self) -> Page:
        context = await self.browser.new_context(viewport={"width": 640, "height": 400})
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

        # a real response of the server first: the page then lives in the server's address
        # space (Chrome blocks fetches from a non-secure page to a more private address,
        # and a page Playwright fulfils has none), then the viewer page is written into it
        await page.goto(self.origin + "/healthz")
        await page.set_content(WHEP_PAGE)
        self.page = page
        return page

    async def watch(
        self, room: str, token: str, munge: tuple[str, ...] = (), layer: str = ""
    ) -> None:
        """Join `room` (WHEP from the page; `layer`: the ?layer= cap, low|mid|high)."""
        page = self.page or await self.open()
        url = f"{self.origin}/whep/{room}" + (f"?layer={layer}" if layer else "")
        out = await page.evaluate("([u, t, m]) => window.watch(u, t, m)", [url, token, list(munge)])
        self.offer, self.answer = out["offer"], out["answer"]
        self.location, self.join_ms = out["location"], float(out["ms"])

    @property
    def session(self) -> str:
        """The WHEP session id (`id` in /sfu/stats): Location's last part without the
        `.tag` that binds it to its token."""
        return self.location.split("?")[0].rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]

    async def sample(self) -> dict[str, Any]:
        assert self.page is not None
        out: dict[str, Any] = await self.page.evaluate("window.sample()")
        self.samples.append(out)
        return out

    async def screenshot(self, path: Path) -> None:
        assert self.page is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(path))

    async def close(self) -> None:
        if self.page is not None:
            await self.page.context.close()
            self.page = None


def jitter_buffer_ms(samples: list[dict[str, Any]]) -> list[float]:
    """Mean jitter-buffer delay of the frames emitted between consecutive samples (ms)."""
    out = []
    for a, b in pairwise(samples):
        emitted = b.get("jb_emitted", 0) - a.get("jb_emitted", 0)
        if emitted > 0:
            out.append(1000.0 * (b.get("jb_delay_s", 0) - a.get("jb_delay_s", 0)) / emitted)
    return out


def summarize(samples: list[dict[str, Any]], since_ms: float | None = None) -> dict[str, Any]:
    """The viewer's figures from its samples (those from `since_ms` on, page time)."""
    rows = [s for s in samples if "frames_decoded" in s]
    if since_ms is not None:
        rows = [s for s in rows if s["t"] >= since_ms]
    if not rows:
        return {"frames_decoded": 0, "samples": 0}
    first, last = rows[0], rows[-1]
    jb = jitter_buffer_ms(rows)
    return {
        "frames_decoded": last["frames_decoded"] - first["frames_decoded"],
        "freeze_count": last["freeze_count"] - first["freeze_count"],
        "freezes_s": round(last["freezes_s"] - first["freezes_s"], 3),
        "frames_dropped": last["frames_dropped"] - first["frames_dropped"],
        "packets_lost": last["lost"] - first["lost"],
        "nacks": last["nacks"] - first["nacks"],
        "plis": last["plis"] - first["plis"],
        "jitter_buffer_p50_ms": _round(percentile(jb, 50)),
        "jitter_buffer_p95_ms": _round(percentile(jb, 95)),
        "jitter_buffer_mean_ms": _round(
            1000.0
            * (last["jb_delay_s"] - first["jb_delay_s"])
            / max(1, last["jb_emitted"] - first["jb_emitted"])
        ),
        "width": last["width"],
        "height": last["height"],
        "seconds": round((last["t"] - first["t"]) / 1000.0, 1),
        "samples": len(rows),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def wrapper_supported() -> bool:
    """`ip` is on PATH (the netns wrapper needs it)."""
    return shutil.which("ip") is not None and os.geteuid() == 0


PUBLISH_SCRIPT = """async ([url, token, codec, width, height]) => {
  const stream = await navigator.mediaDevices.getUserMedia({video: {width, height}, audio: true});
  const pc = new RTCPeerConnection(); window.pub = pc;
  pc.addTransceiver(stream.getAudioTracks()[0], {direction: 'sendonly'});
  const video = pc.addTransceiver(stream.getVideoTracks()[0], {direction: 'sendonly',
    sendEncodings: [{rid: 'q', scaleResolutionDownBy: 4}, {rid: 'h', scaleResolutionDownBy: 2},
                    {rid: 'f'}]});
  video.setCodecPreferences(RTCRtpSender.getCapabilities('video').codecs
    .filter(c => c.mimeType === 'video/' + codec));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => {
    if (pc.iceGatheringState === 'complete') return r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
    setTimeout(r, 3000);
  });
  const resp = await fetch(url, {method: 'POST', body: pc.localDescription.sdp,
    headers: {'content-type': 'application/sdp', authorization: 'Bearer ' + token}});
  const answer = await resp.text();
  if (resp.status !== 201) throw new Error('WHIP ' + resp.status + ': ' + answer);
  await pc.setRemoteDescription({type: 'answer', sdp: answer});
  return new URL(resp.headers.get('location'), url).href;
}"""


async def chromium_publish(
    browser: Browser, origin: str, room: str, token: str, codec: str = "H264"
) -> Page:
    """Publish the fake camera and microphone (simulcast q/h/f, 1280×720) over WHIP from a
    page of `browser`; returns the page (`window.pub` is its RTCPeerConnection)."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(origin.rstrip("/") + "/healthz")
    await page.evaluate(
        PUBLISH_SCRIPT, [f"{origin.rstrip('/')}/whip/{room}", token, codec, 1280, 720]
    )
    return page
