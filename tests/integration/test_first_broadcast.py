"""The README's first broadcast, run as written: `make run`, then Chromium.

tchat is started by `make run` itself — the Makefile's own recipe, from a repository
root, with default settings (every tchat setting is removed from the environment;
only TCHAT_PORT is chosen, so the test does not collide with anyone's server). The
repository root is a temporary copy of this one, with `.venv` linked: the relative
default data directory (`.tchat/data`) then lands in the copy, never in the
developer's own `.tchat/`, and nothing is left in the repository.

In Chromium (fake camera and microphone): open the studio URL `make run` printed,
Go live, watch from a second page, chat, Stop; on the home page open the recording,
which must play through to its end with the chat replayed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from tchat.config import Settings
from tchat.perf.server import free_port

from .chromium import PLAY_THROUGH, frames, launch, new_page, screenshot

REPO = Path(__file__).parents[2]
STUDIO_URL = re.compile(r"^(https?://[^/\s]+)/studio\?room=(\S+)#token=\S+$")
# not copied: the environment (linked), caches, and whatever a local run left behind
SKIP = {".venv", ".tchat", ".git", "reports", "node_modules", ".mypy_cache", ".ruff_cache",
        ".pytest_cache", "__pycache__", "build", "dist"}  # fmt: skip


def clean_env(port: int) -> dict[str, str]:
    """The caller's environment without any tchat setting (defaults apply) or an outer
    make's variables, plus the one port we choose."""
    settings = {(f.alias or name).upper() for name, f in Settings.model_fields.items()}
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in settings and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    env["TCHAT_PORT"] = str(port)
    return env


def repo_copy(dest: Path) -> Path:
    """A copy of the repository root whose `.venv` is this one's (an editable install of
    this source tree, so the copy runs the code under test)."""
    venv = REPO / ".venv"
    if not (venv / "bin" / "tchat").exists():
        pytest.fail("no .venv: run `make venv` first")
    shutil.copytree(REPO, dest, ignore=lambda _d, names: [n for n in names if n in SKIP])
    (dest / ".venv").symlink_to(venv)
    # copytree keeps mtimes, so make sees what it sees here; it must not rebuild the venv
    # (pip would install the copy and leave the venv pointing at a deleted tree)
    stale = subprocess.run(["make", "-q", ".venv/.installed"], cwd=dest, env=clean_env(0))
    if stale.returncode != 0:
        pytest.fail("the venv is older than pyproject.toml: run `make venv` first")
    return dest


class MakeRun:
    """`make run` in a process group of its own (make, tchat serve, FFmpeg)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.log = root / "make-run.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["make", "run"],
                cwd=root,
                env=clean_env(port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def studio_url(self, timeout_s: float) -> str:
        """The studio URL make run printed, once the server it started answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"make run exited {self.proc.returncode}:\n{self.output()}")
            urls = [m for line in self.output().splitlines() if (m := STUDIO_URL.match(line))]
            if urls:
                try:
                    if httpx.get(urls[0].group(1) + "/healthz", timeout=1).status_code == 200:
                        return urls[0].group(0)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        raise AssertionError(f"make run did not serve within {timeout_s}s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    run = MakeRun(repo_copy(tmp_path / "tchat"), free_port())
    yield run
    run.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await launch(pw)
        yield browser
        await browser.close()


async def test_first_broadcast_as_the_readme_says(make_run: MakeRun, browser: Browser) -> None:
    studio_url = make_run.studio_url(timeout_s=180)  # make run may check/setup first
    match = STUDIO_URL.match(studio_url)
    assert match is not None
    base, room = match.group(1), match.group(2)
    errors: list[str] = []

    # -- the studio URL as printed: Go live ------------------------------------------------
    studio = await new_page(browser, errors)
    await studio.goto(studio_url)
    await studio.click("#golive")
    await studio.get_by_text("● LIVE").wait_for(timeout=30_000)

    # -- a second page watches: frames decoded ----------------------------------------------
    watch = await new_page(browser, errors)
    await watch.goto(f"{base}/watch/{room}")
    await watch.wait_for_function("window.tchatWatch.joinMs !== null", timeout=30_000)
    start = await frames(watch)
    await watch.wait_for_function(
        "n => document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames >= n",
        arg=start + 30,
        timeout=30_000,
    )

    # -- chat: typed on the watch page, shown there from the server's fan-out ---------------
    await watch.wait_for_function("!document.querySelector('#say').disabled", timeout=30_000)
    said = f"hello from the first broadcast {time.time():.0f}"
    await watch.fill("#say", said)
    await watch.keyboard.press("Enter")
    await watch.wait_for_function("t => window.tchatChat.arrivals.has(t)", arg=said, timeout=30_000)
    # some seconds of broadcast after the message, so the replay shows it mid-video
    await asyncio.sleep(4)

    # -- Stop --------------------------------------------------------------------------------
    await studio.click("#stop")
    await studio.get_by_text("offline").wait_for(timeout=30_000)

    # -- the home page lists the recording; open it when it is available ---------------------
    home = await new_page(browser, errors)
    await home.goto(base + "/")
    card = home.locator("#recordings li").filter(has_text=room).first
    deadline = time.monotonic() + 60
    while True:
        text = await card.text_content(timeout=30_000) or ""
        if "available" in text:
            break
        assert "failed" not in text, f"the recording failed: {await recording_detail(base)}"
        assert time.monotonic() < deadline, f"recording not available within 60 s: {text}"
        await asyncio.sleep(1)  # the page refreshes every 5 s
    await screenshot(home, "first-broadcast-home")
    await card.get_by_role("link").click()
    await home.wait_for_url(re.compile(r"/recordings/\w+$"))
    await home.wait_for_function("window.tchatReplay.messages === 1", timeout=30_000)

    # -- it plays through, and the chat replays -----------------------------------------------
    rec = await recording_detail(base)
    deadline = int(rec["duration_s"] * 1000 * 3 + 30_000)
    played: dict[str, Any] = await home.evaluate(PLAY_THROUGH, [deadline, 1])  # as a user
    await screenshot(home, "first-broadcast-replay")
    assert played["ended"], played
    assert played["currentTime"] >= rec["duration_s"] - 0.5, (played, rec)
    assert played["frames"] >= 10 and played["width"] > 0, played
    assert played["shown"] == played["messages"] == 1, played
    assert await home.get_by_text(said).is_visible()
    assert not [e for e in played["hlsErrors"] if e.startswith("fatal")], played
    assert not errors, errors
    # the README's promise: every WHIP publish is recorded, in the default data directory
    assert rec["state"] == "available" and rec["segment_count"] >= 2, rec
    assert (make_run.root / ".tchat/data/recordings.sqlite3").exists()


async def recording_detail(base: str) -> Any:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        return (await client.get("/recordings", params={"limit": 1})).json()["recordings"][0]
