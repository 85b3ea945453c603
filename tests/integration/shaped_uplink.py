"""Chromium as the publisher behind a shaped uplink (issue 12 item 2), shared by the
integration test (correctness) and the recording performance suite (timings).

A network namespace joined to the host by a veth pair (`tchat.perf.netlab`), its
uplink — the namespace → host direction, what the publisher sends — shaped with
`tc tbf`, its downlink left wide. Chromium runs *inside* the namespace while
Playwright stays outside: Playwright launches an executable that is a two-line
wrapper, `exec ip netns exec <ns> chromium "$@"`; `ip netns exec` keeps the
descriptors Playwright's pipe transport uses, so the DevTools protocol never touches
the shaped link and only the page's traffic (HTTP, WHIP, the media) crosses it.
`tchat serve` listens on the host (0.0.0.0, ICE candidate = the veth's host address);
the page is not on localhost, so Chromium is told to treat that origin as secure
(getUserMedia needs a secure context).

The studio page goes live (fake camera and microphone, simulcast q/h/f), stays live
for a while, stops; the finished recording is checked (hls_checks) and played to its
end by hls.js in the same Chromium.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import async_playwright

from tchat.auth import issue_token
from tchat.perf.netlab import NetLab, can_create_namespaces

from .chromium import ARGS, PLAY_THROUGH, chromium_path, screenshot
from .conftest import Server
from .hls_checks import check_recording, probe_all
from .sfu_helpers import SECRET

LAYERS_LINE = re.compile(r"video layers (\S.*?)'?$")
DOWNLINK_BPS = 100_000_000


@dataclass
class UplinkRun:
    rate_bps: int
    first_segment_s: float  # Go live click → the recording's first segment is in storage
    live_s: float  # Go live click → the studio's RTCPeerConnection is connected
    layers: list[tuple[str, float]]  # (rid, s since the recording's media start)
    widths: list[int]  # picture width of each segment
    discontinuities: list[int]  # segments marked #EXT-X-DISCONTINUITY
    recording: dict[str, Any]
    played: dict[str, Any]
    sent: list[dict[str, Any]] = field(default_factory=list)  # the studio's layer stats

    @property
    def switches(self) -> int:
        return max(0, len(self.layers) - 1)


def netns_problem() -> str | None:
    """None if this machine can run the shaped-uplink tests, else why not."""
    return can_create_namespaces()


def _layers(log: str) -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = []
    for line in log.splitlines():
        m = LAYERS_LINE.search(line)
        if m:
            found = []
            for item in m.group(1).split(", "):
                rid, _, at = item.partition("@")
                found.append((rid, float(at.rstrip("s'"))))
    return found


async def publish_behind_uplink(
    tmp: Path, rate_bps: int, seconds: float, screen: str | None = None
) -> UplinkRun:
    lab = NetLab()
    server: Server | None = None
    try:
        link = lab.add(DOWNLINK_BPS)
        lab.shape_uplink(link, rate_bps)
        wrapper = tmp / f"chromium-in-{link.netns}"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {link.netns} {chromium_path()} "$@"\n')
        wrapper.chmod(0o755)
        server = Server(tmp, {"TCHAT_HOST": "0.0.0.0", "SFU_UDP_HOST": "0.0.0.0",
                              "SFU_PUBLIC_IP": link.host_ip, "LOG_LEVEL": "info"})  # fmt: skip
        base = f"http://{link.host_ip}:{server.port}"
        server.env["TCHAT_PUBLIC_URL"] = base  # playlist URLs the namespace can reach
        server.start(timeout_s=60)
        room = "uplink"
        token = issue_token(SECRET, room, "publisher", "studio")
        async with async_playwright() as pw, httpx.AsyncClient(base_url=server.url) as api:
            browser = await pw.chromium.launch(
                executable_path=str(wrapper), headless=True,
                args=[*ARGS, f"--unsafely-treat-insecure-origin-as-secure={base}"],
            )  # fmt: skip
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            await page.goto(f"{base}/studio?room={room}#token={token}", timeout=60_000)
            t0 = time.monotonic()
            await page.click("#golive")
            await page.wait_for_function("window.tchatStudio.live", timeout=60_000)
            live_s = time.monotonic() - t0
            first_s = -1.0
            sent: list[dict[str, Any]] = []
            next_sample = 0.0
            while time.monotonic() - t0 < max(seconds, 60 if first_s < 0 else 0):
                now = time.monotonic() - t0
                if first_s < 0:
                    recs = (await api.get("/recordings", params={"room": room})).json()
                    url = recs["recordings"][0]["playlist_url"] if recs["recordings"] else None
                    if url:
                        r = await api.get(url.replace(base, server.url))
                        if r.status_code == 200 and "#EXTINF" in r.text:
                            first_s = time.monotonic() - t0
                if now >= next_sample:
                    layers = await page.evaluate("window.tchatStudio.layers")
                    sent.append({"t": round(now, 1), **{
                        k: [v["width"], v["kbps"], v["limit"]] for k, v in layers.items()
                    }})  # fmt: skip
                    next_sample += 1.0
                if first_s >= 0 and now >= seconds:
                    break
                await asyncio.sleep(0.1)
            assert first_s > 0, "no segment of the recording was stored within 60 s"
            if screen:
                await screenshot(page, screen)
            await page.click("#stop")
            rec: Any = None
            for _ in range(600):
                recs = (await api.get("/recordings", params={"room": room})).json()
                rec = recs["recordings"][0]
                if rec["state"] in ("available", "failed"):
                    break
                await asyncio.sleep(0.1)
            assert rec["state"] == "available", rec
            player = await (await browser.new_context()).new_page()
            await player.goto(f"{base}/recordings/{rec['id']}", timeout=60_000)
            # the whole length at double speed (hls.js fetches and appends it all)
            deadline = int(rec["duration_s"] * 3000 + 60_000)
            played = await player.evaluate(PLAY_THROUGH, [deadline, 2])
            playlist = (await api.get(rec["playlist_url"].replace(base, server.url))).text
            await browser.close()
        objects = Path(server.env["TCHAT_DATA_DIR"]) / "objects" / "recordings" / rec["id"]
        segments = [objects / ln for ln in playlist.splitlines() if ln.endswith(".ts")]
        probed = await probe_all(segments)
        pl = check_recording(playlist, probed)
        run = UplinkRun(
            rate_bps=rate_bps,
            first_segment_s=round(first_s, 3),
            live_s=round(live_s, 3),
            layers=_layers(server.log.read_text()),
            widths=[p.sizes[0][0] for p in probed],
            discontinuities=[i for i, s in enumerate(pl.segments) if s.discontinuity],
            recording=rec,
            played=played,
            sent=sent,
        )
        return run
    finally:
        if server is not None:
            server.stop()
        lab.close()
