"""SFU routes without a worker socket: who may read per-viewer stats."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from tchat.config import load_settings
from tchat.sfu import api as sfu_api


def _client(host: str) -> httpx.AsyncClient:
    app = FastAPI()
    app.state.components = []
    sfu_api.mount(app, load_settings())

    async def stats(viewers: bool) -> dict[str, object]:
        return {"viewers": [] if viewers else 0}

    app.state.sfu_backend = SimpleNamespace(stats=stats)
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_per_viewer_stats_only_from_loopback() -> None:
    """They name sessions (whose DELETE/PUT a token holder could use) and addresses."""
    async with _client("203.0.113.7") as remote:
        assert (await remote.get("/sfu/stats")).json() == {"viewers": 0}
        denied = await remote.get("/sfu/stats", params={"viewers": "true"})
        assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
    async with _client("127.0.0.1") as local:
        assert (await local.get("/sfu/stats", params={"viewers": "true"})).json() == {"viewers": []}
