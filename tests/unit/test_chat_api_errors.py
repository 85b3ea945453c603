"""How the chat HTTP route answers the service's refusals (issue 14.5: a full write
queue is 503 with Retry-After, so clients back off instead of hammering)."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from tchat.auth import issue_token
from tchat.chat import api as chat_api
from tchat.chat.protocol import ProtocolError
from tchat.config import load_settings
from tchat.services import Services, install

SECRET = "unit-secret-0123456789abcdef-0123456789"


async def test_store_busy_is_503_with_retry_after() -> None:
    app = FastAPI()
    chat_api.mount(app, load_settings())

    async def post(room: str, author: str, text: str, role: str = "chat") -> None:
        raise ProtocolError("store_busy", "sqlite store busy")

    install(app, Services(load_settings(), token_secret=SECRET, chat=SimpleNamespace(post=post)))
    token = issue_token(SECRET, "r", "chat")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.post(
            "/rooms/r/messages", json={"text": "hi"}, headers={"authorization": f"Bearer {token}"}
        )
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == "store_busy"
