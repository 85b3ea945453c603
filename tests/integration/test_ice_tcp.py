"""ICE over TCP (issue 17 item 3) with Chromium on a network that blocks UDP.

Chromium runs inside a network namespace (`tchat.perf.netlab`) whose UDP is dropped by
nftables both ways, as in an office that lets only TCP out. Its watch page still plays
over WebRTC — through the SFU's passive TCP candidate (RFC 6544, RFC 4571 framing) —
not over the HLS fallback, and reports the transport's protocol. A second page on the
host, where UDP works, watches the same room for comparison: join time and latency of
both are printed (docs/sfu.md has the figures).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright

from tchat.perf.netlab import NetLab, can_create_namespaces
from tchat.perf.results import TestResult, record_test
from tchat.perf.server import free_port
from tchat.perf.sfu_load import SyntheticPublisher
from tchat.perf.sfu_media import PreparedMedia
from tchat.perf.webrtc_peer import Identity

from .chromium import ARGS, chromium_path, frames, launch, new_page, screenshot
from .conftest import Server
from .sfu_helpers import token

WAIT_MS = 60_000
PLAYING = "window.tchatWatch.transport === 'webrtc' && window.tchatWatch.iceProtocol !== null"


async def _watch(page, url: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    await page.goto(url, timeout=WAIT_MS)
    try:
        await page.wait_for_function(PLAYING, timeout=WAIT_MS)
    except Exception:
        print(
            "DEBUG",
            await page.evaluate("JSON.stringify(window.tchatWatch)"),
            await page.text_content("#status"),
            await page.text_content("#error"),
        )
        raise
    start = await frames(page)
    quality = "document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames"
    await page.wait_for_function(f"{quality} > {start + 30}", timeout=WAIT_MS)
    await page.wait_for_function("window.tchatWatch.latencyMs !== null", timeout=WAIT_MS)
    seen: dict[str, object] = await page.evaluate(
        "({transport: tchatWatch.transport, protocol: tchatWatch.iceProtocol,"
        " joinMs: tchatWatch.joinMs, latencyMs: tchatWatch.latencyMs})"
    )
    return seen


async def test_udp_blocked_chromium_plays_over_ice_tcp(
    tmp_path: Path, media: PreparedMedia
) -> None:
    problem = can_create_namespaces()
    if problem:
        pytest.fail(f"this test needs network namespaces: {problem}")
    lab = NetLab()
    server: Server | None = None
    try:
        link = lab.add(0)
        lab.block_udp(link)
        wrapper = tmp_path / f"chromium-in-{link.netns}"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {link.netns} {chromium_path()} "$@"\n')
        wrapper.chmod(0o755)
        env = {"TCHAT_HOST": "0.0.0.0", "SFU_UDP_HOST": "0.0.0.0",
               "SFU_PUBLIC_IP": link.host_ip, "SFU_TCP_PORT": str(free_port())}  # fmt: skip
        server = Server(tmp_path, env).start(timeout_s=60)
        room = "tcponly"
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            pub = SyntheticPublisher(Identity.create(), media, ["l"])
            await pub.start(client, room, token(room, "publisher"))
            async with async_playwright() as pw:
                inside = await pw.chromium.launch(
                    executable_path=str(wrapper), headless=True, args=ARGS
                )
                errors: list[str] = []
                page = await new_page(inside, errors)
                # bound to 0.0.0.0, the server hands out no dev tokens: one in the link
                viewer = f"#token={token(room, 'viewer')}"
                inside_url = f"http://{link.host_ip}:{server.port}/watch/{room}{viewer}"
                tcp = await _watch(page, inside_url)
                await screenshot(page, "watch-ice-tcp")
                host = await launch(pw)
                udp = await _watch(
                    await new_page(host, errors), f"{server.url}/watch/{room}{viewer}"
                )
                result = TestResult("ice_tcp_vs_udp")
                result.metrics = {
                    "tcp_join_ms": tcp["joinMs"],
                    "udp_join_ms": udp["joinMs"],
                    "tcp_latency_ms": tcp["latencyMs"],
                    "udp_latency_ms": udp["latencyMs"],
                }
                result.notes = [
                    "Chromium watch pages on one room: one in a network namespace whose UDP "
                    "nftables drops (plays over ICE-TCP), one on the host (UDP). Join = WHEP "
                    "request → first decoded frame; latency = the page's estimate (RTT/2 + "
                    "jitter-buffer delay). One run; veth/loopback."
                ]
                result.evaluate()
                record_test("network", result)
                assert tcp["transport"] == "webrtc" and tcp["protocol"] == "tcp", tcp
                assert udp["transport"] == "webrtc" and udp["protocol"] == "udp", udp
                stats = (await client.get("/sfu/stats")).json()
                assert stats["viewers_connected"] == 2
                await inside.close()
                await host.close()
                assert errors == []
            await pub.stop(client, token(room, "publisher"))
    finally:
        if server is not None:
            server.stop()
        lab.close()
