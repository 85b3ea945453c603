"""Chat fan-out over Redis survives idle spells and a Redis restart (issue 13 item 6).

Each test runs its own `redis-server` on a free port (the shared one is left alone),
a real `tchat serve` with REDIS_URL, chat WebSockets as listeners, and `redis-cli` —
a client we did not write — publishing on the room's channel: a frame that arrives
through it proves the subscription is live in Redis, not only local delivery.

What broke: the first listener after ≥ 15 s without one hit "Connection closed by
server" and fan-out stopped for good. Two causes, both reproduced here quickly:
a connection left idle is closed by the server when Redis has a `timeout` (or by a
proxy/NAT) — a private server with `timeout 2` does that in 2 s — and, on a Redis
with no timeout, redis-py's health-check PING after 15 s idle raced the reader task
on the shared connection (the last test waits those 17 s on an in-process bus).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tchat.auth import issue_token
from tchat.bus.redis import RedisBus
from tchat.perf.server import free_port

from .sfu_helpers import SECRET


class RedisServer:
    """A redis-server of this test only (no persistence), restartable on its port."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed: run `make setup`")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(100):
            if self.cli("ping").strip() == "PONG":
                return self
            subprocess.run(["sleep", "0.05"])
        raise RuntimeError("private redis-server did not answer")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cli(self, *args: str) -> str:
        run = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True
        )
        return run.stdout


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        server = RedisServer(tmp_path, *args).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


def ws_url(server: Any, room: str) -> str:
    return server.url.replace("http://", "ws://") + f"/rooms/{room}/ws"


async def next_message(ws: Any, timeout_s: float = 20.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "message":
                return frame["message"]  # type: ignore[no-any-return]


def outside_frame(room: str, text: str) -> str:
    """A message frame as another tchat instance would publish it."""
    message = {"id": "1", "room": room, "author": "elsewhere", "text": text, "ts": 0.0}
    return json.dumps({"type": "message", "message": message})


async def post(client: httpx.AsyncClient, room: str, text: str) -> None:
    token = issue_token(SECRET, room, "chat", "poster")
    r = await client.post(
        f"/rooms/{room}/messages", json={"text": text}, headers={"authorization": f"Bearer {token}"}
    )
    assert r.status_code == 201, r.text


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get("/healthz")).json()
    return data


async def test_fan_out_survives_idle_with_no_listener(server_factory, redis_factory) -> None:  # type: ignore[no-untyped-def]
    redis = redis_factory("--timeout", "2")  # idle connections closed after 2 s
    server = server_factory(REDIS_URL=redis.url)
    room = "idle-room"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with websockets.connect(ws_url(server, room)) as first:
            json.loads(await first.recv())  # hello: a listener hears posts made after it
            await post(client, room, "before")
            assert (await next_message(first))["text"] == "before"
        # no listener in this process: idle well past the server's timeout
        await asyncio.sleep(5)
        async with websockets.connect(ws_url(server, room)) as later:
            json.loads(await later.recv())  # hello: joined, subscription confirmed
            await post(client, room, "after")
            assert (await next_message(later))["text"] == "after"
            # through Redis itself: an outside publisher on the room's channel
            assert redis.cli("publish", f"tchat:{room}", outside_frame(room, "via redis")) == "1\n"
            assert (await next_message(later))["text"] == "via redis"
        h = await health(client)
        assert h["status"] == "ok" and h["bus"]["backend"] == "redis", h


async def test_fan_out_comes_back_after_redis_restarts(server_factory, redis_factory) -> None:  # type: ignore[no-untyped-def]
    redis = redis_factory()
    server = server_factory(REDIS_URL=redis.url)
    room = "restart-room"
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        websockets.connect(ws_url(server, room)) as listener,
    ):
        json.loads(await listener.recv())  # hello
        assert redis.cli("publish", f"tchat:{room}", outside_frame(room, "one")) == "1\n"
        assert (await next_message(listener))["text"] == "one"

        redis.kill()  # mid-stream
        for _ in range(80):
            h = await health(client)
            if h["status"] == "degraded":
                break
            await asyncio.sleep(0.25)
        assert h["status"] == "degraded" and h["bus"]["state"] == "reconnecting", h
        metrics = (await client.get("/metrics")).text
        assert "tchat_bus_subscriber_up 0.0" in metrics
        # posts are still stored and reach this process's own listeners, a new one too
        async with websockets.connect(ws_url(server, room)) as late:
            async with asyncio.timeout(5):  # not held up waiting for Redis
                json.loads(await late.recv())  # hello
            await post(client, room, "during the outage")
            assert (await next_message(listener))["text"] == "during the outage"
            assert (await next_message(late))["text"] == "during the outage"

        redis.start()  # same port, empty
        for _ in range(80):
            h = await health(client)
            if h["status"] == "ok":
                break
            await asyncio.sleep(0.25)
        assert h["status"] == "ok" and h["bus"]["state"] == "connected", h
        assert h["bus"]["reconnects"] >= 1
        # resubscribed: what another instance publishes arrives again
        assert redis.cli("publish", f"tchat:{room}", outside_frame(room, "two")) == "1\n"
        assert (await next_message(listener))["text"] == "two"
        await post(client, room, "three")
        assert (await next_message(listener))["text"] == "three"
        assert "tchat_bus_subscriber_up 1.0" in (await client.get("/metrics")).text


async def test_bus_subscribes_after_an_idle_spell_longer_than_a_health_check(
    redis_factory,  # type: ignore[no-untyped-def]
) -> None:
    """A Redis with no timeout (the default), a listener again after 17 s without one:
    the old reader and subscribe() raced on one connection here (health-check PING at
    15 s) and the subscription was never made."""
    redis = redis_factory()
    got: list[tuple[str, str]] = []
    bus = RedisBus(redis.url)
    await bus.start(lambda channel, payload: got.append((channel, payload)))
    try:
        await bus.subscribe("room")
        await bus.publish("room", "one")
        await bus.unsubscribe("room")
        await asyncio.sleep(17)
        await bus.subscribe("room")
        assert bus.health()["state"] == "connected"
        assert redis.cli("publish", "tchat:room", "two") == "1\n"
        for _ in range(40):
            if ("room", "two") in got:
                break
            await asyncio.sleep(0.1)
        assert got == [("room", "one"), ("room", "two")], got
    finally:
        await bus.close()
