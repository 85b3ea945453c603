"""Page routes without a server: HTML vs JSON on /recordings/{id}, dev tokens' gate."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from tchat.auth import verify_token
from tchat.config import Settings, load_settings
from tchat.services import Services, install
from tchat.web import pages

SECRET = "unit-secret-0123456789abcdef0123"
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


ADMIN_PORT = 8099


def app_with(settings: Settings) -> FastAPI:
    app = FastAPI()
    sfu = SimpleNamespace(live_rooms=lambda: {})
    install(app, Services(settings, token_secret=SECRET, admin_port=ADMIN_PORT, sfu=sfu))  # type: ignore[arg-type]

    @app.get("/recordings/{rec_id}")
    async def recording(rec_id: str) -> dict[str, str]:
        return {"id": rec_id}

    pages.mount(app, settings)
    return app


def client(settings: Settings, port: int = 8080, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client of the public listener (8080), or of the admin one (port=ADMIN_PORT)."""
    transport = httpx.ASGITransport(app=app_with(settings), client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, True),  # embedded defaults: loopback, no public URL
        ({"TCHAT_HOST": "0.0.0.0"}, False),
        ({"TCHAT_PUBLIC_URL": "https://live.example"}, False),
        ({"TCHAT_HOST": "0.0.0.0", "WEB_DEV_TOKENS": "on"}, True),
        ({"WEB_DEV_TOKENS": "off"}, False),
    ],
)
def test_dev_tokens_only_on_loopback_defaults(env: dict[str, str], enabled: bool) -> None:
    assert load_settings(**env).dev_tokens_enabled is enabled


async def test_recording_page_for_browsers_json_for_api_clients() -> None:
    async with client(load_settings()) as c:
        page = await c.get("/recordings/abc123", headers={"accept": HTML})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/static/recording.js" in page.text
        api = await c.get("/recordings/abc123", headers={"accept": "application/json"})
        assert api.json() == {"id": "abc123"}
        assert (await c.get("/recordings/abc123")).json() == {"id": "abc123"}
        for path, script in [
            ("/", "Live now"),
            ("/studio", "studio.js"),
            ("/watch/r1", "watch.js"),
        ]:
            r = await c.get(path)
            assert r.status_code == 200 and script in r.text, path
        assert (await c.get("/static/common.js")).status_code == 200
        assert (await c.get("/live")).json() == {
            "rooms": [],
            "access": "public",
            "dev_tokens": True,
            "dev_token_url": f"http://127.0.0.1:{ADMIN_PORT}/dev/token",
        }


async def test_dev_token_issues_chat_tokens_only_when_enabled() -> None:
    async with client(load_settings(), port=ADMIN_PORT) as c:
        r = await c.post("/dev/token", json={"room": "demo", "role": "chat"})
        assert r.status_code == 200
        verify_token(SECRET, r.json()["token"], "demo", "chat")
        # never a publisher token, and a bad room name is a 422 with the reason
        assert (await c.post("/dev/token", json={"room": "demo", "role": "publisher"})).is_error
        assert (await c.post("/dev/token", json={"room": "a b", "role": "chat"})).status_code == 422
    async with client(load_settings(TCHAT_HOST="0.0.0.0"), port=ADMIN_PORT) as c:
        r = await c.post("/dev/token", json={"room": "demo", "role": "chat"})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
    # on loopback defaults, only on the admin listener, addressed by a loopback name: not
    # on the public one (what a reverse proxy on this host forwards to: loopback peer,
    # Host 127.0.0.1:8080), nor from a page whose name was rebound to 127.0.0.1
    body = {"room": "demo", "role": "chat"}
    async with client(load_settings()) as c:
        r = await c.post("/dev/token", json=body)
        assert r.status_code == 403 and "admin listener" in r.json()["detail"]
    async with client(load_settings(), port=ADMIN_PORT) as c:
        r = await c.post("/dev/token", json=body, headers={"host": "evil.example"})
        assert r.status_code == 403
        assert (await c.post("/dev/token", json=body, headers={"host": "localhost"})).is_success


async def test_dev_tokens_one_identity_per_address_and_rate_limited() -> None:
    """Issue 14.8: fresh tokens do not buy a fresh chat rate limit (one identity per source
    address), and issuing them is itself limited per address."""
    body = {"room": "demo", "role": "chat"}
    async with client(load_settings(WEB_DEV_TOKENS="on"), peer="203.0.113.5") as c:
        ids = set()
        codes = []
        for _ in range(pages.DEV_TOKEN_BURST + 5):
            r = await c.post("/dev/token", json=body)
            codes.append(r.status_code)
            if r.status_code == 200:
                ids.add(verify_token(SECRET, r.json()["token"], "demo", "chat").identity)
        assert codes.count(200) == pages.DEV_TOKEN_BURST and codes.count(429) == 5
        assert len(ids) == 1
    async with client(load_settings(WEB_DEV_TOKENS="on"), peer="203.0.113.6") as c:
        other = verify_token(SECRET, (await c.post("/dev/token", json=body)).json()["token"],
                             "demo", "chat").identity  # fmt: skip
        assert other not in ids


async def test_dev_token_cors_only_for_own_pages() -> None:
    """The pages (public listener's origin) may call the admin listener; other origins not."""
    async with client(load_settings(), port=ADMIN_PORT) as c:
        own = {"origin": "http://127.0.0.1:8080"}
        pre = await c.options(
            "/dev/token", headers={**own, "access-control-request-method": "POST"}
        )
        assert pre.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
        r = await c.post("/dev/token", json={"room": "d", "role": "chat"}, headers=own)
        assert r.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
        evil = {"origin": "http://evil.example"}
        pre = await c.options("/dev/token", headers=evil)
        assert "access-control-allow-origin" not in pre.headers
        r = await c.post("/dev/token", json={"room": "d", "role": "chat"}, headers=evil)
        assert "access-control-allow-origin" not in r.headers


def test_token_url_points_at_the_page_with_the_token_in_the_fragment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from tchat.cli import main

    monkeypatch.setenv("TCHAT_SECRET", SECRET)
    monkeypatch.setenv("TCHAT_PORT", "8123")
    out = CliRunner().invoke(main, ["token", "--room", "demo", "--role", "publisher", "--url"])
    assert out.exit_code == 0, out.output
    url, token = out.output.split()
    assert url == f"http://127.0.0.1:8123/studio?room=demo#token={token}"
    verify_token(SECRET, token, "demo", "publisher")
    out = CliRunner().invoke(main, ["token", "--room", "demo", "--role", "chat", "--url"])
    assert out.output.startswith("http://127.0.0.1:8123/watch/demo#token=")


def test_live_rooms_of_a_cluster_sum_viewers_over_instances() -> None:
    """Origin and edges each report their viewers; a room whose origin is gone is not live."""
    beats = [
        {
            "live_rooms": {
                "a": {"viewers": 3, "live_for_s": 12.5},
                "b": {"viewers": 1, "live_for_s": None},
            }
        },
        {"live_rooms": {"a": {"viewers": 4, "live_for_s": None}}},
        {},  # an instance that has not answered a heartbeat yet
    ]
    cluster = SimpleNamespace(
        supervisor=SimpleNamespace(
            instances={i: SimpleNamespace(stats=b) for i, b in enumerate(beats)}
        )
    )
    svc = Services(load_settings(), sfu_cluster=cluster)  # type: ignore[arg-type]
    assert pages.live_rooms(svc) == [
        {"room": "a", "viewers": 7, "live_for_s": 12.5, "recording_id": None}
    ]
