"""Back-pressure a client can follow (issue 17 item 4), in Chromium: a full SFU answers
the watch page's WHEP with 503 and Retry-After; the page says so, waits as told (not
sooner), and plays over WebRTC once a place is free — no HLS fallback, no error left."""

from __future__ import annotations

import time

import httpx
from playwright.async_api import Response, async_playwright

from tchat.perf.sfu_load import SyntheticPublisher
from tchat.perf.sfu_media import PreparedMedia
from tchat.perf.webrtc_peer import ClientPeer, Identity

from .chromium import frames, launch, new_page, screenshot
from .sfu_helpers import auth, join_viewer, token, wait_for

WAIT_MS = 60_000


async def test_watch_page_waits_as_told_while_the_sfu_is_full(
    server_factory,  # type: ignore[no-untyped-def]
    media: PreparedMedia,
) -> None:
    # two sessions in all, none kept for publishers: the publisher and one viewer fill it
    server = server_factory(SFU_MAX_PEERS="2", SFU_PUBLISHER_RESERVE="0")
    room = "full"
    identity = Identity.create()
    errors: list[str] = []
    whep: list[tuple[float, int, str | None]] = []  # (when, status, Retry-After)

    def seen(resp: Response) -> None:
        if resp.request.method == "POST" and f"/whep/{room}" in resp.url:
            whep.append((time.monotonic(), resp.status, resp.headers.get("retry-after")))

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        pub = SyntheticPublisher(identity, media, ["l"])
        await pub.start(client, room, token(room, "publisher"))
        blocker = ClientPeer(identity)
        blocker_url = await join_viewer(client, room, blocker, "low")
        async with async_playwright() as pw:
            browser = await launch(pw)
            page = await new_page(browser, errors)
            page.on("response", seen)
            await page.goto(f"{server.url}/watch/{room}")
            await wait_for(lambda: sum(s == 503 for _, s, _ in whep) >= 2, what="two 503s")
            assert await page.text_content("#status") == "busy"
            assert "Retrying in 2 s" in (await page.text_content("#error") or "")
            refused = [(t, after) for t, s, after in whep if s == 503]
            assert all(after == "2" for _, after in refused)
            # the page came back no sooner than it was told
            assert refused[1][0] - refused[0][0] >= 2.0 - 0.1, refused
            await screenshot(page, "watch-busy")

            # a place frees up: the next attempt is let in and plays over WebRTC
            gone = await client.delete(blocker_url, headers=auth(room, "viewer"))
            assert gone.status_code == 200
            blocker.close()
            await page.wait_for_function(
                "window.tchatWatch.transport === 'webrtc'", timeout=WAIT_MS
            )
            start = await frames(page)
            await page.wait_for_function(
                "document.querySelector('video').getVideoPlaybackQuality()"
                f".totalVideoFrames > {start + 20}",
                timeout=WAIT_MS,
            )
            assert whep[-1][1] == 201 and not (await page.text_content("#error") or "").strip()
            await browser.close()
        await pub.stop(client, token(room, "publisher"))
    assert errors == []
