"""Debian's Chromium through Playwright for the journey tests (first broadcast, shaped
uplinks): fake camera and microphone, autoplay, page errors collected."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Playwright

from tchat.perf.results import REPORTS_DIR

SCREENS = REPORTS_DIR / "latest" / "screens"
DESKTOP = {"width": 1280, "height": 800}
HLS_JS = Path(__file__).parents[2] / "src/tchat/web/static/vendor/hls.min.js"
ARGS = [
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


def chromium_path() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run `make setup` (scripts/setup-system.sh)")
    if not HLS_JS.exists():
        pytest.fail("hls.js is not installed: run `make web-deps` (scripts/web-deps.sh)")
    return exe


async def launch(pw: Playwright) -> Browser:
    return await pw.chromium.launch(executable_path=chromium_path(), headless=True, args=ARGS)


async def new_page(browser: Browser, errors: list[str]) -> Page:
    context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
    return page


async def frames(page: Page) -> int:
    quality = "document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames"
    return int(await page.evaluate(quality))


async def screenshot(page: Page, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


# Plays the recording page's video to its end (at `rate`, 1 = normal speed); resolves
# with what the browser saw (time reached, frames decoded, hls.js errors, replayed chat).
PLAY_THROUGH = """async ([deadlineMs, rate]) => {
  const v = document.querySelector('video');
  const t0 = performance.now();
  while (!(v.duration > 0) && performance.now() - t0 < deadlineMs) {
    await new Promise(r => setTimeout(r, 100));
  }
  v.playbackRate = rate;
  await v.play();
  while (!v.ended && performance.now() - t0 < deadlineMs) {
    await new Promise(r => setTimeout(r, 200));
  }
  return {ended: v.ended, currentTime: v.currentTime, duration: v.duration,
          frames: v.getVideoPlaybackQuality().totalVideoFrames,
          width: v.videoWidth, height: v.videoHeight,
          hlsErrors: window.tchatReplay.hlsErrors, error: window.tchatReplay.error,
          shown: window.tchatReplay.shown, messages: window.tchatReplay.messages};
}"""
