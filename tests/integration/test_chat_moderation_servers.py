"""Moderation through real `tchat serve` processes: WebSocket frames and HTTP routes on
one server (SQLite), and two instances on one Redis and one Cassandra keyspace:
enforcement and deletions cross instances within 1 s (measured), a restarted
instance knows every restriction, slow mode holds across instances, presence is
summed across instances and pushed at most every 2 s."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from tchat.auth import issue_token

SECRET = "integration-secret-0123456789abcdef"
REDIS = "redis://127.0.0.1:6379/0"
CQL_ENV = {
    "CHAT_STORE": "cql",
    "SCYLLADB_KEYSPACE": "tchat_mod_it",
    "REDIS_URL": REDIS,
    "CHAT_RATE_PER_S": "1000",
    "CHAT_BURST": "1000",
}


def new_room() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


def token(room: str, role: str, identity: str) -> str:
    return issue_token(SECRET, room, role, identity)


def bearer(room: str, role: str, identity: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(room, role, identity)}"}


def ws_url(server: Any, room: str, tok: str | None = None) -> str:
    url = server.url.replace("http://", "ws://") + f"/rooms/{room}/ws"
    return url + (f"?token={tok}" if tok else "")


async def recv(ws: Any, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next frame of `kind` (others skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame  # type: ignore[no-any-return]


@pytest.fixture
def server(server_factory: Any) -> Any:
    return server_factory(CHAT_RATE_PER_S="1000", CHAT_BURST="1000")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


# --- one server ------------------------------------------------------------------------
async def test_moderation_frames_and_routes_on_one_server(
    server: Any, http: httpx.AsyncClient
) -> None:
    room = new_room()
    base = f"{server.url}/rooms/{room}"
    async with (
        websockets.connect(ws_url(server, room, token(room, "publisher", "host"))) as host,
        websockets.connect(ws_url(server, room, token(room, "chat", "ann"))) as ann,
        websockets.connect(ws_url(server, room)) as reader,
    ):
        hello = await recv(host, "hello")
        assert hello["role"] == "broadcaster" and hello["can_moderate"] is True
        hello = await recv(ann, "hello")
        assert hello["role"] == "chatter" and hello["can_moderate"] is False
        assert hello["identity"] == "ann" and hello["restriction"] is None
        assert "presence" in hello and hello["slow_mode_s"] == 0
        assert (await recv(reader, "hello"))["role"] == "reader"
        await ann.send(json.dumps({"type": "post", "text": "rude words", "nonce": "p1"}))
        message_id = (await recv(ann, "ack"))["id"]
        # a chat token cannot moderate: an error frame, the connection stays
        await ann.send(
            json.dumps(
                {"type": "moderate", "action": "delete", "message_id": message_id, "nonce": "x"}
            )
        )
        err = await recv(ann, "error")
        assert err["code"] == "not_moderator" and err["nonce"] == "x"
        await host.send(
            json.dumps(
                {"type": "moderate", "action": "delete", "message_id": message_id, "nonce": "d1"}
            )
        )
        done = await recv(host, "moderated")
        assert done["nonce"] == "d1" and done["entry"]["target"] == "ann"
        for ws in (ann, reader):
            assert (await recv(ws, "deleted"))["ids"] == [message_id]
        history = (await http.get(f"{base}/messages")).json()["messages"]
        assert message_id not in [m["id"] for m in history]
        # bad input over the socket: error frames with codes
        for frame, code in [
            ({"action": "timeout", "target": "ann", "seconds": 0}, "bad_duration"),
            ({"action": "timeout", "target": "ann", "seconds": 14 * 86400 + 1}, "bad_duration"),
            ({"action": "delete", "message_id": "123456789"}, "unknown_message"),
            ({"action": "ban", "target": "host"}, "target_is_self"),
            ({"action": "explode"}, "unknown_action"),
        ]:
            await host.send(json.dumps({"type": "moderate", "nonce": "b", **frame}))
            assert (await recv(host, "error"))["code"] == code, frame
        # timeout over HTTP: the socket of the target hears it, its posts get `until`
        r = await http.post(
            f"{base}/moderation/timeout",
            headers=bearer(room, "publisher", "host"),
            json={"target": "ann", "seconds": 600},
        )
        assert r.status_code == 200 and r.json()["detail"]["seconds"] == 600
        restriction = await recv(ann, "restriction")
        assert restriction["identity"] == "ann" and restriction["kind"] == "timeout"
        await ann.send(json.dumps({"type": "post", "text": "let me", "nonce": "p2"}))
        err = await recv(ann, "error")
        assert err["code"] == "timed_out" and err["nonce"] == "p2"
        assert err["until"] == pytest.approx(time.time() + 600, abs=30)
        r = await http.post(
            f"{base}/messages", headers=bearer(room, "chat", "ann"), json={"text": "over http"}
        )
        assert r.status_code == 403 and r.json()["error"] == "timed_out" and r.json()["until"]

    # HTTP errors: no token, a chat token, a viewer token, bad body, unknown message
    r = await http.post(f"{base}/moderation/ban", json={"target": "x"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    for role in ("chat", "viewer"):
        r = await http.post(
            f"{base}/moderation/ban", headers=bearer(room, role, "ann"), json={"target": "x"}
        )
        assert r.status_code == 403 and r.json()["error"] == "not_moderator", r.text
    mod = bearer(room, "moderator", "mia")
    r = await http.post(
        f"{base}/moderation/timeout", headers=mod, json={"target": "x", "seconds": 14 * 86400 + 1}
    )
    assert r.status_code == 400 and r.json()["error"] == "bad_duration"
    r = await http.post(f"{base}/moderation/delete", headers=mod, json={"message_id": "42"})
    assert r.status_code == 404 and r.json()["error"] == "unknown_message"
    r = await http.post(f"{base}/moderation/ban", headers=mod, json={"target": "host"})
    assert r.status_code == 403 and r.json()["error"] == "target_is_broadcaster"
    r = await http.post(f"{base}/moderation/slow_mode", headers=mod, json={"seconds": 10})
    assert r.status_code == 200
    r = await http.post(f"{base}/moderation/clear", headers=mod)
    assert r.status_code == 200 and r.json()["action"] == "clear"
    assert (await http.get(f"{base}/messages")).json()["messages"] == []
    # the state and the log: moderators only
    assert (await http.get(f"{base}/moderation/log")).status_code == 401
    r = await http.get(f"{base}/moderation/log", headers=bearer(room, "chat", "ann"))
    assert r.status_code == 403
    state = (await http.get(f"{base}/moderation", headers=mod)).json()
    assert state["slow_mode_s"] == 10 and state["roles"]["host"] == "broadcaster"
    assert [x["identity"] for x in state["restrictions"]] == ["ann"]
    entries = (await http.get(f"{base}/moderation/log?limit=2", headers=mod)).json()
    assert [e["action"] for e in entries["entries"]] == ["clear", "slow_mode"]
    assert entries["entries"][0]["actor"] == "mia" and entries["next_before"]
    older = await http.get(f"{base}/moderation/log?before={entries['next_before']}", headers=mod)
    assert [e["action"] for e in older.json()["entries"]] == ["timeout", "delete"]
    entry = older.json()["entries"][1]
    assert entry["actor"] == "host" and entry["detail"]["text"] == "rude words"


async def test_banned_identity_reconnecting_with_a_fresh_token(
    server: Any, http: httpx.AsyncClient
) -> None:
    room = new_room()
    r = await http.post(
        f"{server.url}/rooms/{room}/moderation/ban",
        headers=bearer(room, "publisher", "host"),
        json={"target": "zed"},
    )
    assert r.status_code == 200
    fresh = issue_token(SECRET, room, "chat", "zed", ttl_s=7200)  # a new token, same identity
    async with websockets.connect(ws_url(server, room, fresh)) as ws:
        hello = await recv(ws, "hello")
        assert hello["can_post"] is True and hello["restriction"]["kind"] == "ban"
        await ws.send(json.dumps({"type": "post", "text": "it's me again", "nonce": "n"}))
        err = await recv(ws, "error")
        assert err["code"] == "banned" and err["until"] is None and err["nonce"] == "n"
        await ws.send(json.dumps({"type": "ping"}))  # still connected, still reading
        await recv(ws, "pong")
    r = await http.get(f"{server.url}/rooms/{room}/messages")
    assert r.json()["messages"] == []


async def test_moderator_token_is_refused_for_publishing(
    server: Any, http: httpx.AsyncClient
) -> None:
    room = new_room()
    r = await http.post(
        f"{server.url}/whip/{room}",
        content="v=0\r\n",
        headers={"content-type": "application/sdp", **bearer(room, "moderator", "mia")},
    )
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    # and the CLI issues moderator tokens
    args = ["token", "--room", room, "--role", "moderator", "--identity", "mia", "--url"]
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tchat", *args],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    url, value = out.stdout.split()
    assert url.startswith(f"{server.url}/watch/{room}#token=")
    r = await http.get(
        f"{server.url}/rooms/{room}/moderation", headers={"authorization": f"Bearer {value}"}
    )
    assert r.status_code == 200


async def test_openapi_lists_the_moderation_routes(server: Any, http: httpx.AsyncClient) -> None:
    paths = (await http.get(f"{server.url}/openapi.json")).json()["paths"]
    for action in ("delete", "timeout", "ban", "unban", "slow_mode", "clear"):
        assert "post" in paths[f"/rooms/{{room}}/moderation/{action}"], action
    assert "get" in paths["/rooms/{room}/moderation/log"]
    assert "get" in paths["/rooms/{room}/moderation"]


# --- two instances: one Redis, one Cassandra keyspace ------------------------------------
@pytest.fixture
def pair(server_factory: Any, services_answering: dict[str, str]) -> tuple[Any, Any]:
    a = server_factory(**CQL_ENV)
    b = server_factory(**CQL_ENV, TCHAT_DATA_DIR=a.env["TCHAT_DATA_DIR"] + "-b")
    return a, b


async def until_refused(
    http: httpx.AsyncClient, server: Any, room: str, who: str, started: float, code: str
) -> float:
    """Post as `who` on `server` until refused with `code`; seconds since `started`."""
    headers = bearer(room, "chat", who)
    deadline = started + 10
    while time.monotonic() < deadline:
        r = await http.post(
            f"{server.url}/rooms/{room}/messages", headers=headers, json={"text": "probe"}
        )
        if r.status_code != 201:
            assert r.json()["error"] == code, r.text
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    raise AssertionError(f"{who} never refused with {code} on {server.url}")


async def until_accepted(
    http: httpx.AsyncClient, server: Any, room: str, who: str, started: float
) -> float:
    headers = bearer(room, "chat", who)
    while time.monotonic() < started + 10:
        r = await http.post(
            f"{server.url}/rooms/{room}/messages", headers=headers, json={"text": "back"}
        )
        if r.status_code == 201:
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    raise AssertionError(f"{who} still refused on {server.url}")


async def test_two_instances_enforce_and_delete_within_a_second(
    pair: tuple[Any, Any], http: httpx.AsyncClient
) -> None:
    """Each effect on the other instance is timed from the action's request (total) and from
    the acting instance's answer (the action is set: stored, applied, published); the
    second is the cross-instance delay the 1 s bound is about. Both are printed."""
    a, b = pair
    room = new_room()
    host = bearer(room, "publisher", "host")
    figures: dict[str, tuple[float, float]] = {}  # effect → (from request, after answer)

    async def action(server: Any, kind: str, body: dict[str, Any]) -> tuple[float, float]:
        t0 = time.monotonic()
        r = await http.post(f"{server.url}/rooms/{room}/moderation/{kind}", headers=host, json=body)
        assert r.status_code == 200, r.text
        return t0, time.monotonic()

    def note(name: str, t0: float, t1: float, effect: float) -> None:
        figures[name] = (effect - t0, max(0.0, effect - t1))

    async with (
        websockets.connect(ws_url(a, room)) as on_a,
        websockets.connect(ws_url(b, room)) as on_b,
    ):
        await recv(on_a, "hello")
        await recv(on_b, "hello")
        # the room's state is in B's memory already (B served a post)
        r = await http.post(
            f"{b.url}/rooms/{room}/messages",
            headers=bearer(room, "chat", "vic"),
            json={"text": "hello from b"},
        )
        assert r.status_code == 201
        message_id = r.json()["id"]
        for ws in (on_a, on_b):
            await recv(ws, "message")

        # a deletion on A reaches the clients of both (readers timestamp the frame on arrival)
        async def arrival(ws: Any) -> float:
            frame = await recv(ws, "deleted", timeout=15)
            assert frame["ids"] == [message_id]
            return time.monotonic()

        readers = [asyncio.create_task(arrival(ws)) for ws in (on_a, on_b)]
        t0, t1 = await action(a, "delete", {"message_id": message_id})
        for name, effect in zip(("a", "b"), await asyncio.gather(*readers), strict=True):
            note(f"delete_reaches_{name}", t0, t1, effect)
        history = (await http.get(f"{b.url}/rooms/{room}/messages")).json()["messages"]
        assert message_id not in [m["id"] for m in history]

        # a ban on A is enforced on B, its lifting too; a timeout on B is enforced on A
        t0, t1 = await action(a, "ban", {"target": "vic"})
        note(
            "ban_enforced_on_b",
            t0,
            t1,
            t0 + await until_refused(http, b, room, "vic", t0, "banned"),
        )
        t0, t1 = await action(a, "unban", {"target": "vic"})
        note("unban_on_b", t0, t1, t0 + await until_accepted(http, b, room, "vic", t0))
        t0, t1 = await action(b, "timeout", {"target": "vic", "seconds": 60})
        refused = await until_refused(http, a, room, "vic", t0, "timed_out")
        note("timeout_enforced_on_a", t0, t1, t0 + refused)
    print(
        "cross-instance figures, s (from the request, after the acting instance answered):",
        {k: (round(total, 4), round(after, 4)) for k, (total, after) in figures.items()},
    )
    slow = {k: after for k, (_, after) in figures.items() if after >= 1.0}
    assert not slow, f"not within 1 s of the action: {slow}"


async def test_restarted_instance_knows_every_restriction(
    pair: tuple[Any, Any], server_factory: Any, http: httpx.AsyncClient
) -> None:
    a, b = pair
    room = new_room()
    host = bearer(room, "publisher", "host")
    r = await http.post(
        f"{b.url}/rooms/{room}/messages",
        headers=bearer(room, "chat", "kim"),
        json={"text": "soon gone"},
    )
    gone = r.json()["id"]
    for path, body in [
        ("ban", {"target": "lee"}),
        ("timeout", {"target": "kim", "seconds": 3600}),
        ("slow_mode", {"seconds": 60}),
        ("delete", {"message_id": gone}),
    ]:
        r = await http.post(f"{a.url}/rooms/{room}/moderation/{path}", headers=host, json=body)
        assert r.status_code == 200, r.text
    b.kill()  # SIGKILL: nothing saved on the way out
    b2 = server_factory(**{**CQL_ENV, "TCHAT_DATA_DIR": b.env["TCHAT_DATA_DIR"]})
    for who, code in (("lee", "banned"), ("kim", "timed_out")):
        r = await http.post(
            f"{b2.url}/rooms/{room}/messages", headers=bearer(room, "chat", who), json={"text": "x"}
        )
        assert r.status_code == 403 and r.json()["error"] == code
    first = await http.post(
        f"{b2.url}/rooms/{room}/messages", headers=bearer(room, "chat", "max"), json={"text": "one"}
    )
    assert first.status_code == 201
    second = await http.post(
        f"{b2.url}/rooms/{room}/messages", headers=bearer(room, "chat", "max"), json={"text": "two"}
    )
    assert second.status_code == 429 and second.json()["error"] == "slow_mode"
    texts = [
        m["text"] for m in (await http.get(f"{b2.url}/rooms/{room}/messages")).json()["messages"]
    ]
    assert texts == ["one"]


async def test_slow_mode_holds_across_instances(
    pair: tuple[Any, Any], http: httpx.AsyncClient
) -> None:
    a, b = pair
    room = new_room()
    r = await http.post(
        f"{a.url}/rooms/{room}/moderation/slow_mode",
        headers=bearer(room, "moderator", "mia"),
        json={"seconds": 30},
    )
    assert r.status_code == 200
    chatter = bearer(room, "chat", "ned")
    r = await http.post(f"{a.url}/rooms/{room}/messages", headers=chatter, json={"text": "on a"})
    assert r.status_code == 201
    r = await http.post(f"{b.url}/rooms/{room}/messages", headers=chatter, json={"text": "on b"})
    assert r.status_code == 429 and r.json()["error"] == "slow_mode"
    assert 0 < r.json()["retry_after"] <= 30
    r = await http.post(
        f"{b.url}/rooms/{room}/messages",
        headers=bearer(room, "moderator", "mia"),
        json={"text": "moderators are exempt"},
    )
    assert r.status_code == 201


async def test_presence_is_summed_across_instances_and_pushed_every_2s(
    pair: tuple[Any, Any],
) -> None:
    a, b = pair
    room = new_room()

    async def until_presence(ws: Any, watching: int, chatting: int) -> dict[str, Any]:
        seen = []
        try:
            async with asyncio.timeout(30):
                while True:
                    frame = await recv(ws, "presence", timeout=30)
                    seen.append((frame["watching"], frame["chatting"]))
                    if seen[-1] == (watching, chatting):
                        return frame
        except TimeoutError:
            logs = "\n".join(s.log.read_text()[-1500:] for s in (a, b))
            raise AssertionError(
                f"presence never reached {watching}/{chatting} in 30 s; saw {seen}\n{logs}"
            ) from None

    async with (
        websockets.connect(ws_url(a, room)) as a1,
        websockets.connect(ws_url(a, room)) as a2,
        websockets.connect(ws_url(b, room)) as b1,
    ):
        for ws in (a1, a2, b1):
            await recv(ws, "hello")
        await b1.send(json.dumps({"type": "watch", "transport": "hls"}))  # an HLS watch page
        await until_presence(a1, 1, 3)
        await until_presence(b1, 1, 3)
        # churn: sockets come and go every 0.2 s; a1 still gets at most one push per 2 s
        arrivals: list[float] = []

        async def churn() -> None:
            for _ in range(25):
                async with websockets.connect(ws_url(b, room)) as extra:
                    await recv(extra, "hello")
                    await asyncio.sleep(0.2)

        async def watch_a1() -> None:
            while True:
                await recv(a1, "presence", timeout=30)
                arrivals.append(time.monotonic())

        watcher = asyncio.create_task(watch_a1())
        await churn()
        watcher.cancel()
        gaps = [y - x for x, y in itertools.pairwise(arrivals)]
        assert arrivals and all(g >= 1.5 for g in gaps), gaps  # 2 s ticks, loop jitter aside
    # a dead instance drops out when its entry expires (3 intervals)
    async with websockets.connect(ws_url(a, room)) as a3:
        await recv(a3, "hello")
        async with websockets.connect(ws_url(b, room)) as b2:
            await recv(b2, "hello")
            await until_presence(a3, 0, 2)
            b.kill()
        await until_presence(a3, 0, 1)
