"""Chat through a real `tchat serve`: WebSocket protocol, errors, fan-out, durability."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
import redis
import websockets

from tchat.auth import issue_token

SECRET = "integration-secret-0123456789abcdef"


def ws_url(server: Any, room: str, token: str | None = None) -> str:
    url = server.url.replace("http://", "ws://") + f"/rooms/{room}/ws"
    return url + (f"?token={token}" if token else "")


WAIT_S = 30.0  # a frame's deadline: generous, the machine may be busy


async def recv(ws: Any, kind: str, timeout: float = WAIT_S) -> dict[str, Any]:
    """The next frame of `kind` (skipping others)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame  # type: ignore[no-any-return]


def new_room() -> str:
    return f"r-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def server(server_factory: Any) -> Any:
    return server_factory(CHAT_RATE_PER_S="50", CHAT_BURST="20")


async def test_post_ack_fanout_and_history(server: Any) -> None:
    room = new_room()
    token = issue_token(SECRET, room, "chat", "alice")
    async with (
        websockets.connect(ws_url(server, room)) as reader,
        websockets.connect(ws_url(server, room, token)) as poster,
    ):
        assert (await recv(reader, "hello"))["can_post"] is False
        assert (await recv(poster, "hello"))["can_post"] is True
        await poster.send(json.dumps({"type": "post", "text": "hi all", "nonce": "n1"}))
        ack = await recv(poster, "ack")
        got = await recv(reader, "message")
        assert ack["nonce"] == "n1" and got["message"]["id"] == ack["id"]
        assert got["message"]["author"] == "alice" and got["message"]["text"] == "hi all"
    page = httpx.get(f"{server.url}/rooms/{room}/messages?limit=50").json()
    assert [m["text"] for m in page["messages"]] == ["hi all"]
    assert page["next_before"] is None


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "malformed_json"),
        ("[1,2]", "malformed_frame"),
        (json.dumps({"type": "shout", "text": "x"}), "unknown_type"),
        (json.dumps({"type": "post", "text": "   "}), "empty_text"),
        (json.dumps({"type": "post", "text": "x" * 501}), "text_too_long"),
        (json.dumps({"type": "post", "text": "bell\u0007"}), "control_character"),
        (json.dumps({"type": "post", "text": 5}), "bad_text"),
        (b"\xff\xfe not utf-8", "invalid_utf8"),
        ("x" * 20000, "frame_too_large"),
    ],
)
async def test_bad_frames_get_error_and_connection_survives(
    server: Any, frame: str | bytes, code: str
) -> None:
    room = new_room()
    token = issue_token(SECRET, room, "chat", "bob")
    async with websockets.connect(ws_url(server, room, token)) as ws:
        await recv(ws, "hello")
        await ws.send(frame)
        err = await recv(ws, "error")
        assert err["code"] == code, err
        await ws.send(json.dumps({"type": "post", "text": "still here", "nonce": "ok"}))
        assert (await recv(ws, "ack"))["nonce"] == "ok"


async def test_posting_without_or_with_wrong_token(server: Any) -> None:
    room = new_room()
    async with websockets.connect(ws_url(server, room)) as ws:
        await recv(ws, "hello")
        await ws.send(json.dumps({"type": "post", "text": "hi", "nonce": "a"}))
        err = await recv(ws, "error")
        assert err["code"] == "unauthorized" and err["nonce"] == "a"
        other_room = issue_token(SECRET, "elsewhere", "chat", "eve")
        await ws.send(json.dumps({"type": "auth", "token": other_room}))
        assert (await recv(ws, "error"))["code"] == "unauthorized"
        forged = issue_token("wrong-secret-0123456789abcdef0123", room, "chat", "eve")
        await ws.send(json.dumps({"type": "auth", "token": forged}))
        assert "invalid token" in (await recv(ws, "error"))["detail"]
        await ws.send(json.dumps({"type": "auth", "token": issue_token(SECRET, room, "chat")}))
        assert (await recv(ws, "hello"))["can_post"] is True
        await ws.send(json.dumps({"type": "ping"}))
        await recv(ws, "pong")
    # a bad token in the query string is an error frame too, and reading still works
    async with websockets.connect(ws_url(server, room, "garbage")) as ws:
        assert (await recv(ws, "error"))["code"] == "unauthorized"
        assert (await recv(ws, "hello"))["can_post"] is False
    r = httpx.post(f"{server.url}/rooms/{room}/messages", json={"text": "x"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


async def test_flooding_is_rate_limited_with_error_frames(server_factory: Any) -> None:
    # 2 messages/s after a burst of 20: 60 posts are limited unless the server takes over
    # 20 s to read them (at 50/s a busy server that read one post per 16 ms limited none)
    server = server_factory(CHAT_RATE_PER_S="2", CHAT_BURST="20")
    room = new_room()
    token = issue_token(SECRET, room, "chat", "flood")
    async with websockets.connect(ws_url(server, room, token)) as ws:
        await recv(ws, "hello")
        for i in range(60):
            await ws.send(json.dumps({"type": "post", "text": f"m{i}", "nonce": str(i)}))
        acks = errors = 0
        while acks + errors < 60:
            frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            if frame["type"] == "ack":
                acks += 1
            elif frame["type"] == "error":
                assert frame["code"] == "rate_limited" and "retry in" in frame["detail"]
                errors += 1
        assert errors > 0 and acks >= 20


async def test_oversized_websocket_message_closes_with_1009(server: Any) -> None:
    room = new_room()
    async with websockets.connect(ws_url(server, room), max_size=None) as ws:
        await recv(ws, "hello")
        await ws.send("x" * (2 * 1024 * 1024))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert httpx.get(server.url + "/healthz").status_code == 200


async def test_invalid_room_and_limits(server: Any) -> None:
    for bad in ("bad%20room/messages", "ok/messages?limit=0", "ok/messages?before=abc"):
        r = httpx.get(f"{server.url}/rooms/{bad}")  # the documented error, not FastAPI's 422
        assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
    async with websockets.connect(ws_url(server, "bad~room")) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


async def test_two_servers_share_rooms_over_redis(server_factory: Any) -> None:
    a = server_factory(REDIS_URL="redis://127.0.0.1:6379/0")
    b = server_factory(REDIS_URL="redis://127.0.0.1:6379/0", TCHAT_DATA_DIR=a.env["TCHAT_DATA_DIR"])
    room = new_room()
    token = issue_token(SECRET, room, "chat", "carol")
    async with (
        websockets.connect(ws_url(a, room, token)) as on_a,
        websockets.connect(ws_url(b, room, token)) as on_b,
    ):
        await recv(on_a, "hello")
        await recv(on_b, "hello")
        # both servers subscribed to the room's channel (not "0.3 s later")
        channel = f"tchat:{room}"
        with redis.Redis(host="127.0.0.1", port=6379) as r:
            deadline = time.monotonic() + WAIT_S
            while r.pubsub_numsub(channel)[0][1] < 2:
                assert time.monotonic() < deadline, "the servers did not subscribe to the room"
                await asyncio.sleep(0.05)
        await on_a.send(json.dumps({"type": "post", "text": "from a"}))
        await on_b.send(json.dumps({"type": "post", "text": "from b"}))
        got_a = [(await recv(on_a, "message"))["message"] for _ in range(2)]
        got_b = [(await recv(on_b, "message"))["message"] for _ in range(2)]
        assert {m["text"] for m in got_a} == {m["text"] for m in got_b} == {"from a", "from b"}
        # the two instances got distinct id nodes from Redis: their ids can never collide
        nodes = {m["text"]: (int(m["id"]) >> 12) & 1023 for m in got_a}
        assert nodes["from a"] != nodes["from b"]


async def test_acknowledged_messages_survive_a_killed_server(server_factory: Any) -> None:
    server = server_factory(CHAT_RATE_PER_S="1000", CHAT_BURST="1000")
    room = new_room()
    token = issue_token(SECRET, room, "chat", "dave")
    acked: set[str] = set()
    async with websockets.connect(ws_url(server, room, token)) as ws:
        await recv(ws, "hello")
        for i in range(300):
            await ws.send(json.dumps({"type": "post", "text": f"m{i}", "nonce": str(i)}))
        while len(acked) < 150:
            frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            if frame["type"] == "ack":
                acked.add(frame["id"])
        server.kill()  # SIGKILL right after acknowledgements, with posts still in flight
    restarted = server_factory(TCHAT_DATA_DIR=server.env["TCHAT_DATA_DIR"])
    stored: set[str] = set()
    before = None
    while True:
        url = f"{restarted.url}/rooms/{room}/messages?limit=200"
        page = httpx.get(url + (f"&before={before}" if before else "")).json()
        stored |= {m["id"] for m in page["messages"]}
        if not page["next_before"]:
            break
        before = page["next_before"]
    assert acked <= stored, f"{len(acked - stored)} acknowledged messages lost"
