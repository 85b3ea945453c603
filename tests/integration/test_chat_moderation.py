"""Moderation contract, the same on both real stores (SQLite, Cassandra): delete with
tombstones, timeouts that end by themselves, ban/unban, slow mode, clear, restart
survival (a new service on the same store), bad input. The service runs in-process
on the real store with the in-process bus; tests/integration/test_chat_moderation_servers.py
runs real `tchat serve` processes (Redis, two instances)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tchat.bus.memory import MemoryBus
from tchat.chat.cql import CqlChatStore
from tchat.chat.moderation import MAX_TIMEOUT_S, ModerationError, parse_action
from tchat.chat.moderation_api import cleared_before
from tchat.chat.moderation_models import RESTRICT, StateRow
from tchat.chat.service import ChatService, Listener
from tchat.chat.sqlite import SqliteChatStore
from tchat.chat.store import ChatStore

KEYSPACE = "tchat_contract"
THIRTY_DAYS = 30 * 86400
MakeService = Callable[[], Awaitable[ChatService]]


@pytest.fixture(params=["sqlite", "cql"])
async def make_service(
    request: pytest.FixtureRequest, tmp_path: Path, services_answering: dict[str, str]
) -> AsyncIterator[MakeService]:
    """Services on one backing store: a second call is a restarted server."""
    made: list[ChatService] = []

    async def make() -> ChatService:
        store: ChatStore
        if request.param == "sqlite":
            store = SqliteChatStore(tmp_path / "chat.sqlite3", ttl_s=THIRTY_DAYS)
        else:
            store = CqlChatStore([("127.0.0.1", 9042)], KEYSPACE, THIRTY_DAYS)
        service = ChatService(store, MemoryBus(), 1000, 1000, node_id=len(made) + 1)
        await service.start()
        made.append(service)
        return service

    yield make
    for service in made:
        await service.close()


def room() -> str:
    return f"mod-{uuid.uuid4().hex[:10]}"


class Frames:
    """A room listener that keeps what it is sent (decoded)."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        self.got.append(json.loads(text))

    async def wait(self, kind: str, timeout_s: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for frame in self.got:
                if frame["type"] == kind:
                    self.got.remove(frame)
                    return frame
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {kind} frame in {timeout_s}s; got {self.got}")


async def listen(service: ChatService, r: str) -> Frames:
    frames = Frames()
    await service.join(r, Listener(frames.send, lambda: None))
    return frames


async def act(service: ChatService, r: str, who: str, role: str, kind: str, **args: Any) -> Any:
    assert service.moderation is not None
    return await service.moderation.act(r, who, role, parse_action(kind, args))


async def refused(code: str, coro: Awaitable[Any]) -> ModerationError:
    with pytest.raises(ModerationError) as caught:
        await coro
    assert caught.value.code == code, caught.value.detail
    return caught.value


async def visible(service: ChatService, r: str) -> list[str]:
    after = await cleared_before(service, r)
    return [m.text for m in reversed(await service.store.history(r, 200, None, after))]


async def test_delete_leaves_a_tombstone_and_reaches_listeners(make_service: MakeService) -> None:
    service, r = await make_service(), room()
    frames = await listen(service, r)
    sent = [await service.post(r, "alice", f"m{i}") for i in range(3)]
    entry = await act(service, r, "host", "publisher", "delete", message_id=str(sent[1].id))
    assert entry.action == "delete" and entry.target == "alice" and entry.actor == "host"
    assert entry.detail["text"] == "m1"
    assert (await frames.wait("deleted"))["ids"] == [str(sent[1].id)]
    assert await visible(service, r) == ["m0", "m2"]
    stored = await service.store.get_message(r, sent[1].id)  # the row stays, tombstoned
    assert stored is not None and stored.message.text == "m1"
    assert stored.deleted_by == "host" and stored.deleted_at == pytest.approx(time.time(), abs=30)
    again = await refused(
        "already_deleted", act(service, r, "mod", "moderator", "delete", message_id=str(sent[1].id))
    )
    assert again.status == 409 and "host" in again.detail
    log = await service.store.read_log(r, 10, None)
    assert [(e.action, e.actor, e.actor_role) for e in log] == [("delete", "host", "broadcaster")]


async def test_timeout_refuses_posts_then_ends_by_itself(make_service: MakeService) -> None:
    service, r = await make_service(), room()
    frames = await listen(service, r)
    await service.post(r, "bob", "before")
    entry = await act(service, r, "mod", "moderator", "timeout", target="bob", seconds=2)
    until = entry.detail["until"]
    assert until == pytest.approx(time.time() + 2, abs=1)
    restriction = await frames.wait("restriction")
    assert restriction["identity"] == "bob" and restriction["kind"] == "timeout"
    error = await refused("timed_out", service.post(r, "bob", "during"))
    assert error.status == 403 and error.fields["until"] == until
    await service.post(r, "carol", "others still post")
    while time.time() < until + 0.05:  # the timeout ends by itself, nobody lifts it
        await asyncio.sleep(0.05)
    await service.post(r, "bob", "after")
    assert await visible(service, r) == ["before", "others still post", "after"]
    # the store forgets it too (a TTL'd row on CQL, expires_at on SQLite)
    rows = await service.store.load_state(r)
    assert not [row for row in rows if row.key == RESTRICT + "bob"]


async def test_ban_holds_until_unban_and_survives_a_restart(make_service: MakeService) -> None:
    first, r = await make_service(), room()
    await first.post(r, "eve", "spam")
    await act(first, r, "host", "publisher", "ban", target="eve", reason="spam")
    await refused("banned", first.post(r, "eve", "more spam"))
    await act(first, r, "host", "publisher", "timeout", target="troll", seconds=600)
    await act(first, r, "host", "publisher", "slow_mode", seconds=30)
    await act(first, r, "host", "publisher", "clear")
    restarted = await make_service()  # a new process on the same store
    banned = await refused("banned", restarted.post(r, "eve", "after restart"))
    assert banned.fields["until"] is None
    timed = await refused("timed_out", restarted.post(r, "troll", "x"))
    assert timed.fields["until"] == pytest.approx(time.time() + 600, abs=30)
    assert restarted.moderation is not None
    state = (await restarted.moderation.state(r)).snapshot(time.time())
    assert state["slow_mode_s"] == 30 and state["cleared_before"] is not None
    assert {x["identity"]: x["kind"] for x in state["restrictions"]} == {
        "eve": "ban",
        "troll": "timeout",
    }
    assert await visible(restarted, r) == []  # cleared before the restart
    await act(restarted, r, "host", "publisher", "unban", target="eve")
    await restarted.post(r, "eve", "welcome back")
    await refused("not_restricted", act(restarted, r, "host", "publisher", "unban", target="eve"))
    log = await restarted.store.read_log(r, 50, None)
    assert [e.action for e in log] == ["unban", "clear", "slow_mode", "timeout", "ban"]
    assert log[-1].detail == {"reason": "spam"}


async def test_slow_mode_one_post_per_period_staff_exempt(make_service: MakeService) -> None:
    service, r = await make_service(), room()
    frames = await listen(service, r)
    await act(service, r, "host", "publisher", "slow_mode", seconds=2)
    assert (await frames.wait("slow_mode"))["seconds"] == 2
    await service.post(r, "dan", "one")
    started = time.time()
    wait = await refused("slow_mode", service.post(r, "dan", "two"))
    assert wait.status == 429 and 0 < wait.fields["retry_after"] <= 2
    await service.post(r, "erin", "another chatter is not held up")
    for i in range(3):  # moderators and the broadcaster are exempt
        await service.post(r, "mod", f"mod {i}", role="moderator")
        await service.post(r, "host", f"host {i}", role="publisher")
    while time.time() < started + wait.fields["retry_after"] + 0.05:
        await asyncio.sleep(0.05)
    await service.post(r, "dan", "two, later")
    await act(service, r, "host", "publisher", "slow_mode", seconds=0)
    await service.post(r, "dan", "three")
    await service.post(r, "dan", "four: slow mode is off")


async def test_clear_hides_history_without_losing_rows(make_service: MakeService) -> None:
    service, r = await make_service(), room()
    frames = await listen(service, r)
    old = [await service.post(r, "fay", f"old {i}") for i in range(5)]
    entry = await act(service, r, "mod", "moderator", "clear")
    assert (await frames.wait("cleared"))["before"] == entry.detail["before"]
    await service.post(r, "fay", "new")
    assert await visible(service, r) == ["new"]
    for m in old:  # tombstone for the room, not data loss
        stored = await service.store.get_message(r, m.id)
        assert stored is not None and stored.message.text == m.text


async def test_deleted_rows_do_not_shorten_pages(make_service: MakeService) -> None:
    service, r = await make_service(), room()
    sent = [await service.post(r, f"u{i % 3}", f"m{i}") for i in range(90)]
    for m in sent[::3]:  # every third, spread over the CQL buckets
        await act(service, r, "host", "publisher", "delete", message_id=str(m.id))
    expected = [m.text for m in reversed(sent) if int(m.text[1:]) % 3]
    page = await service.store.history(r, 50)
    assert [m.text for m in page] == expected[:50]  # full page although 30 rows are deleted
    seen, before = [], None
    while True:
        chunk = await service.store.history(r, 20, before)
        seen += [m.text for m in chunk]
        if len(chunk) < 20:
            break
        before = chunk[-1].id
    assert seen == expected


async def test_ban_with_delete_recent_removes_the_authors_messages(
    make_service: MakeService,
) -> None:
    service, r = await make_service(), room()
    frames = await listen(service, r)
    spam = [await service.post(r, "spammer", f"buy {i}") for i in range(4)]
    await service.post(r, "gus", "hello")
    entry = await act(
        service, r, "mod", "moderator", "ban", message_id=str(spam[-1].id), delete_recent=True
    )
    assert entry.target == "spammer"
    assert sorted(entry.detail["deleted"]) == sorted(str(m.id) for m in spam)
    assert (await frames.wait("restriction"))["kind"] == "ban"
    assert sorted((await frames.wait("deleted"))["ids"]) == sorted(str(m.id) for m in spam)
    assert await visible(service, r) == ["hello"]


async def test_bad_input_is_refused_and_changes_nothing(make_service: MakeService) -> None:
    service, r, other = await make_service(), room(), room()
    mine = await service.post(r, "hal", "mine")
    theirs = await service.post(other, "ivy", "in the other room")
    await service.post(r, "host", "hi from the broadcaster", role="publisher")
    await service.post(r, "mod2", "hi from a moderator", role="moderator")
    unknown = await refused(
        "unknown_message",
        act(service, r, "host", "publisher", "delete", message_id=str(mine.id + 12345)),
    )
    assert unknown.status == 404
    # a message of another room is not found in this one, and stays where it is
    await refused(
        "unknown_message", act(service, r, "host", "publisher", "delete", message_id=str(theirs.id))
    )
    await refused(
        "unknown_message",
        act(service, r, "host", "publisher", "timeout", message_id=str(theirs.id), seconds=60),
    )
    for seconds in (0, -5, MAX_TIMEOUT_S + 1, 1.5, "60", True):
        await refused(
            "bad_duration",
            act(service, r, "host", "publisher", "timeout", target="hal", seconds=seconds),
        )
    await refused("bad_message_id", act(service, r, "host", "publisher", "delete", message_id="x"))
    await refused("bad_target", act(service, r, "host", "publisher", "ban", target=""))
    await refused("bad_target", act(service, r, "host", "publisher", "ban"))
    await refused("unknown_action", act(service, r, "host", "publisher", "nuke"))
    # a moderator acting on the broadcaster (by identity or through a message), on another
    # moderator, or on itself; a chat token acting at all
    mod = await refused(
        "target_is_broadcaster", act(service, r, "mod", "moderator", "ban", target="host")
    )
    assert mod.status == 403
    await refused(
        "target_is_broadcaster",
        act(service, r, "mod", "moderator", "timeout", target="host", seconds=60),
    )
    host_msg = (await service.store.history(r, 10))[1]
    assert host_msg.author == "host"
    await refused(
        "target_is_broadcaster",
        act(service, r, "mod", "moderator", "delete", message_id=str(host_msg.id)),
    )
    await refused("target_is_moderator", act(service, r, "mod", "moderator", "ban", target="mod2"))
    await refused("target_is_self", act(service, r, "mod", "moderator", "ban", target="mod"))
    await refused("not_moderator", act(service, r, "hal", "chat", "ban", target="ivy"))
    await refused("not_moderator", act(service, r, "hal", "viewer", "clear"))
    # the broadcaster may act on a moderator
    await act(service, r, "host", "publisher", "timeout", target="mod2", seconds=60)
    await refused("actor_restricted", act(service, r, "mod2", "moderator", "ban", target="hal"))
    assert await visible(service, r) == ["mine", "hi from the broadcaster", "hi from a moderator"]
    assert await visible(service, other) == ["in the other room"]
    assert [e.action for e in await service.store.read_log(r, 50, None)] == ["timeout"]


async def test_banned_identity_with_a_fresh_token_is_still_banned(
    make_service: MakeService,
) -> None:
    """Restrictions hold for the identity (the token's subject), not for one token."""
    service, r = await make_service(), room()
    await act(service, r, "host", "publisher", "ban", target="mallory")
    await refused("banned", service.post(r, "mallory", "new token, same me", role="chat"))
    await refused("banned", service.post(r, "mallory", "even as a moderator", role="moderator"))
    assert service.moderation is not None
    hello = await service.moderation.hello(r, "mallory", "chat")
    assert hello["restriction"]["kind"] == "ban"


async def test_state_rows_with_a_ttl_expire_on_the_store(make_service: MakeService) -> None:
    service, r = await make_service(), room()
    now = time.time()
    short = StateRow(r, RESTRICT + "x", "timeout", 1, now + 1, "host", now, 1)
    kept = StateRow(r, RESTRICT + "y", "ban", 0, None, "host", now, 2)
    await service.store.put_state(short, 1)
    await service.store.put_state(kept, None)
    assert {row.key for row in await service.store.load_state(r)} == {short.key, kept.key}
    await asyncio.sleep(2.2)
    assert [row.key for row in await service.store.load_state(r)] == [kept.key]
