"""A page served from another origin publishes and plays through tchat (CORS).

Headless Chromium (Playwright) loads a page from http://localhost:<other port> — a
second origin, a plain HTTP server of the test's own — while tchat serves on
http://127.0.0.1:<port>. (A page Playwright answers itself counts as a public
origin, and Chromium's Local Network Access then refuses its calls to loopback
before CORS is even asked; a real loopback server is what a developer has.)
The page is the plainest outside client: RTCPeerConnection and fetch (RFC 9725),
no tchat code. It publishes (fake camera), watches, caps the
layer, posts to the chat, lists recordings and ends both sessions, reading Location
and ETag from the answers: every call is a real cross-origin request, most with a
preflight (Authorization, application/sdp, JSON). A server that does not list the
page's origin is refused by the browser."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from tchat.auth import issue_token
from tchat.perf.server import free_port

from .sfu_helpers import SECRET

SCRIPT = """
const gathered = (pc) => new Promise((r) => {
  if (pc.iceGatheringState === "complete") return r();
  pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r();
  setTimeout(r, 3000);
});
async function exchange(url, pc, token) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const resp = await fetch(url, { method: "POST", body: pc.localDescription.sdp,
    headers: { "content-type": "application/sdp", authorization: `Bearer ${token}` } });
  if (resp.status !== 201) throw new Error(`${url}: ${resp.status} ${await resp.text()}`);
  await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  return { location: new URL(resp.headers.get("location"), url).href,
           etag: resp.headers.get("etag") };
}
window.publish = async (server, room, token) => {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly" });
  window.pub = pc;
  return exchange(`${server}/whip/${room}`, pc, token);
};
window.watch = async (server, room, token) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  window.view = pc;
  return exchange(`${server}/whep/${room}`, pc, token);
};
window.viewerStats = async () => {
  const out = { state: view.connectionState };
  (await view.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out.frames = s.framesDecoded || 0; out.freezes = s.freezeCount || 0;
      out.lost = s.packetsLost || 0;
    }
  });
  return out;
};
window.call = async (method, url, token, body) => {
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  if (body != null) headers["content-type"] = "application/json";
  try {
    const resp = await fetch(url, { method, headers,
      body: body == null ? undefined : JSON.stringify(body) });
    return { status: resp.status, text: await resp.text() };
  } catch (err) {
    return { status: 0, text: String(err) };  // the browser refused: CORS
  }
};
"""


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[str]:
    """http://localhost:<port>/player.html, served by a plain HTTP server (not tchat)."""
    site = tmp_path / "elsewhere"
    site.mkdir()
    html = f"<!doctype html><title>elsewhere</title><script>{SCRIPT}</script>"
    (site / "player.html").write_text(html)
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", free_port()), functools.partial(Quiet, directory=str(site))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run `make setup` (scripts/setup-system.sh)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=exe,
            headless=True,
            args=[
                "--no-sandbox",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
            ],
        )
        yield browser
        await browser.close()


async def open_other_origin(browser: Browser, origin: str) -> Any:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{origin}/player.html")
    assert await page.evaluate("location.origin") == origin
    return page


async def test_page_from_another_origin_publishes_and_plays(
    server_factory,  # type: ignore[no-untyped-def]
    browser: Browser,
    other_origin: str,
) -> None:
    server = server_factory(SFU_RECORD="false")  # loopback defaults: CORS_ORIGINS=auto → *
    room = "cors"
    pub_token = issue_token(SECRET, room, "publisher")
    view_token = issue_token(SECRET, room, "viewer")
    chat_token = issue_token(SECRET, room, "chat")
    assert not server.url.startswith(other_origin)
    page = await open_other_origin(browser, other_origin)
    args = [server.url, room]
    pub = await page.evaluate("([s, r, t]) => publish(s, r, t)", [*args, pub_token])
    assert pub["location"].startswith(f"{server.url}/whip/{room}/") and pub["etag"]
    view = await page.evaluate("([s, r, t]) => watch(s, r, t)", [*args, view_token])
    assert view["location"].startswith(f"{server.url}/whep/{room}/") and view["etag"]
    stats: dict[str, Any] = {}
    for _ in range(120):
        stats = await page.evaluate("viewerStats()")
        if stats.get("frames", 0) >= 60:
            break
        await page.wait_for_timeout(250)
    assert stats.get("frames", 0) >= 60 and stats["state"] == "connected", stats

    call = "([m, u, t, b]) => call(m, u, t, b)"
    r = await page.evaluate(
        call, ["PUT", f"{view['location']}/layer", view_token, {"max_layer": 1}]
    )
    assert r["status"] == 200, r
    r = await page.evaluate(
        call, ["POST", f"{server.url}/rooms/{room}/messages", chat_token, {"text": "hello"}]
    )
    assert r["status"] == 201, r
    r = await page.evaluate(call, ["GET", f"{server.url}/rooms/{room}/messages", None, None])
    assert r["status"] == 200 and "hello" in r["text"], r
    r = await page.evaluate(call, ["GET", f"{server.url}/recordings?room={room}", None, None])
    assert r["status"] == 200 and json.loads(r["text"])["recordings"] == [], r
    # errors are readable cross-origin too (the body says why)
    r = await page.evaluate(call, ["DELETE", view["location"], chat_token, None])
    assert r["status"] == 403 and "forbidden" in r["text"], r
    for session, token in ((view, view_token), (pub, pub_token)):
        r = await page.evaluate(call, ["DELETE", session["location"], token, None])
        assert r["status"] == 200, r

    async with httpx.AsyncClient(base_url=server.url) as client:
        preflight = await client.options(
            f"/whip/{room}",
            headers={
                "origin": other_origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "*"
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        plain = await client.options(f"/whip/{room}")
        assert plain.status_code == 204 and plain.headers["accept-post"] == "application/sdp"
        assert "POST" in plain.headers["allow"]
        drops = (await client.get("/sfu/stats")).json()["drops"]
        assert "rtcp_malformed" not in drops, drops  # Chrome's padded transport-cc


async def test_an_origin_not_listed_is_refused(
    server_factory,  # type: ignore[no-untyped-def]
    browser: Browser,
    other_origin: str,
) -> None:
    server = server_factory(CORS_ORIGINS="https://studio.example")
    page = await open_other_origin(browser, other_origin)
    token = issue_token(SECRET, "r", "chat")
    r = await page.evaluate(
        "([u, t]) => call('POST', u, t, {text: 'x'})", [f"{server.url}/rooms/r/messages", token]
    )
    assert r["status"] == 0 and "Failed to fetch" in r["text"], r
    async with httpx.AsyncClient(base_url=server.url) as client:
        listed = await client.options(
            "/rooms/r/messages",
            headers={"origin": "https://studio.example", "access-control-request-method": "POST"},
        )
        assert listed.headers["access-control-allow-origin"] == "https://studio.example"
        # the pages and dev tokens never get CORS headers
        r = await client.get("/live", headers={"origin": "https://studio.example"})
        assert "access-control-allow-origin" not in r.headers
