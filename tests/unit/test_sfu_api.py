"""SFU routes without a worker socket: who may read per-viewer stats."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from tchat.config import load_settings
from tchat.services import Services, install
from tchat.sfu import api as sfu_api

ADMIN_PORT = 8099


def _client(peer: str, port: int = 8080) -> httpx.AsyncClient:
    app = FastAPI()
    sfu_api.mount(app, load_settings())

    async def stats(viewers: bool) -> dict[str, object]:
        return {"viewers": [] if viewers else 0}

    backend = SimpleNamespace(stats=stats)
    install(app, Services(load_settings(), admin_port=ADMIN_PORT, sfu_backend=backend))
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}")


async def test_per_viewer_stats_only_on_the_admin_listener() -> None:
    """They name sessions (whose DELETE/PUT a token holder could use) and addresses. A
    reverse proxy on this host connects from loopback with Host 127.0.0.1:8080: neither
    the peer address nor Host tells it from a local user; the listener does."""
    for peer in ("203.0.113.7", "127.0.0.1"):
        async with _client(peer) as public:
            assert (await public.get("/sfu/stats")).json() == {"viewers": 0}
            denied = await public.get("/sfu/stats", params={"viewers": "true"})
            assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
            assert "admin listener" in denied.json()["detail"]
    async with _client("127.0.0.1", ADMIN_PORT) as admin:
        assert (await admin.get("/sfu/stats", params={"viewers": "true"})).json() == {"viewers": []}
