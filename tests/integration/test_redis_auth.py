"""Issue 14.11: tchat talks to a Redis that requires AUTH, with the password in REDIS_URL
(as docker-compose.yml does), and never prints that password."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import websockets

from tchat.auth import issue_token
from tchat.perf.server import free_port

SECRET = "integration-secret-0123456789abcdef"


@pytest.fixture
def redis_with_auth(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A private redis-server that requires a password: (port, password)."""
    port, password = free_port(), secrets.token_hex(16)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", password],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, password=password)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):  # it really wants the password
            redis.Redis(port=port).ping()
        yield port, password
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


async def test_chat_fans_out_through_a_redis_that_requires_auth(
    server_factory,  # type: ignore[no-untyped-def]
    redis_with_auth: tuple[int, str],
) -> None:
    port, password = redis_with_auth
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    a = server_factory(REDIS_URL=url)
    b = server_factory(REDIS_URL=url)
    room = "authed"
    ws_url = b.url.replace("http://", "ws://") + f"/rooms/{room}/ws"
    async with websockets.connect(ws_url) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "hello"
        token = issue_token(SECRET, room, "chat", "alice")
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                f"{a.url}/rooms/{room}/messages",
                json={"text": "across instances"},
                headers={"authorization": f"Bearer {token}"},
            )
            assert r.status_code == 201, r.text
        async with asyncio.timeout(15):  # server B got it from server A through Redis
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "message":
                    assert frame["message"]["text"] == "across instances"
                    break
    for server in (a, b):
        assert password not in server.log.read_text()
