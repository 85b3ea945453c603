"""The sans-I/O parts of chat moderation with a fake clock: state rows and their versions,
the post check (bans, timeouts, slow mode, who is exempt), action arguments, roles,
frames; and the shell's handling of events that arrive while a room loads."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tchat.auth import TokenError, issue_token, verify_token
from tchat.chat.moderation import (
    MAX_TIMEOUT_S,
    MOD_CHANNEL,
    Moderation,
    ModerationError,
    RoomState,
    parse_action,
)
from tchat.chat.moderation_models import CLEARED, RESTRICT, ROLE, SLOW_MODE, StateRow
from tchat.chat.protocol import Moderate, ProtocolError, Watch, decode_frame

T0 = 1_800_000_000.0


def row(
    key: str, kind: str = "", value: int = 0, until: float | None = None, v: int = 1
) -> StateRow:
    return StateRow("r", key, kind, value, until, "host", T0, v)


def refusal(st: RoomState, who: str, role: str, now: float) -> ModerationError:
    with pytest.raises(ModerationError) as caught:
        st.check_post(who, role, now)
    return caught.value


def test_rows_apply_by_version_so_late_replays_are_harmless() -> None:
    st = RoomState("r")
    assert st.apply(row(RESTRICT + "a", "ban", v=5))
    assert not st.apply(row(RESTRICT + "a", "lifted", v=4))  # older: a late bus delivery
    assert st.restrictions["a"].kind == "ban"
    assert st.apply(row(RESTRICT + "a", "lifted", v=6))
    assert "a" not in st.restrictions
    assert st.apply(row(RESTRICT + "a", "lifted", v=6))  # the same again: idempotent
    st.apply(row(SLOW_MODE, value=10, v=7))
    st.apply(row(CLEARED, value=12345, v=8))
    st.apply(row(ROLE + "m", "moderator", v=9))
    assert (st.slow_mode_s, st.cleared, st.rank_of("m"), st.rank_of("x")) == (10, 12345, 1, 0)


def test_ban_and_timeout_refuse_with_until_and_timeouts_end_by_themselves() -> None:
    st = RoomState("r")
    st.apply(row(RESTRICT + "b", "ban"))
    st.apply(row(RESTRICT + "t", "timeout", 60, until=T0 + 60))
    banned = refusal(st, "b", "chat", T0)
    assert (banned.code, banned.status, banned.fields) == ("banned", 403, {"until": None})
    timed = refusal(st, "t", "chat", T0 + 10)
    assert timed.code == "timed_out" and timed.fields["until"] == T0 + 60
    assert timed.fields["retry_after"] == pytest.approx(50)
    assert "50 s left" in timed.detail
    st.check_post("t", "chat", T0 + 60)  # over at `until`, nobody lifted it
    assert st.restriction("t", T0 + 60) is None and st.restriction("t", T0 + 59) is not None
    # a ban holds for the identity whatever its token; only the broadcaster is never held
    assert refusal(st, "b", "moderator", T0).code == "banned"
    st.check_post("b", "publisher", T0)


def test_slow_mode_counts_posts_per_author_and_exempts_staff() -> None:
    st = RoomState("r")
    st.apply(row(SLOW_MODE, value=10))
    st.check_post("a", "chat", T0)
    wait = refusal(st, "a", "chat", T0 + 3)
    assert wait.code == "slow_mode" and wait.status == 429
    assert wait.fields == {"retry_after": 7.0, "slow_mode_s": 10}
    st.check_post("b", "chat", T0 + 3)  # per author
    for i in range(3):
        st.check_post("m", "moderator", T0 + i)
        st.check_post("h", "publisher", T0 + i)
    st.check_post("a", "chat", T0 + 10)
    st.apply(row(SLOW_MODE, value=0, v=2))  # off: no waits left over
    st.check_post("a", "chat", T0 + 10.1)
    st.check_post("a", "chat", T0 + 10.2)


@pytest.mark.parametrize(
    ("kind", "args", "code"),
    [
        ("timeout", {"target": "a", "seconds": 0}, "bad_duration"),
        ("timeout", {"target": "a", "seconds": MAX_TIMEOUT_S + 1}, "bad_duration"),
        ("timeout", {"target": "a", "seconds": 2.5}, "bad_duration"),
        ("timeout", {"target": "a", "seconds": "60"}, "bad_duration"),
        ("timeout", {"target": "a"}, "bad_duration"),
        ("timeout", {"target": "a", "message_id": "1", "seconds": 5}, "bad_target"),
        ("ban", {}, "bad_target"),
        ("ban", {"target": "x\u0000y"}, "bad_target"),
        ("ban", {"target": "x" * 129}, "bad_target"),
        ("unban", {"message_id": "5"}, "bad_target"),
        ("delete", {}, "bad_message_id"),
        ("delete", {"message_id": "-1"}, "bad_message_id"),
        ("delete", {"message_id": str(2**63)}, "bad_message_id"),
        ("delete", {"message_id": True}, "bad_message_id"),
        ("slow_mode", {"seconds": 3601}, "bad_duration"),
        ("slow_mode", {"seconds": -1}, "bad_duration"),
        ("ban", {"target": "a", "reason": "x" * 201}, "bad_reason"),
        ("ban", {"target": "a", "delete_recent": "yes"}, "bad_request"),
        ("purge", {}, "unknown_action"),
    ],
)
def test_action_arguments_are_checked(kind: str, args: dict[str, Any], code: str) -> None:
    with pytest.raises(ModerationError) as caught:
        parse_action(kind, args)
    assert caught.value.code == code and caught.value.status == 400


def test_valid_actions_parse() -> None:
    assert parse_action("timeout", {"target": "a", "seconds": 1}).seconds == 1
    assert parse_action("timeout", {"message_id": "7", "seconds": MAX_TIMEOUT_S}).message_id == 7
    assert parse_action("delete", {"message_id": 42}).message_id == 42
    assert parse_action("slow_mode", {"seconds": 0}).seconds == 0
    ban = parse_action("ban", {"target": "a", "delete_recent": True, "reason": "spam"})
    assert (ban.target, ban.delete_recent, ban.reason) == ("a", True, "spam")


def test_moderator_tokens_moderate_chat_and_watch_but_never_publish() -> None:
    secret = "unit-secret-0123456789abcdef0123456789"
    mod = issue_token(secret, "r", "moderator", "mia")
    for role in ("moderator", "chat", "viewer"):
        assert verify_token(secret, mod, "r", role).identity == "mia"
    with pytest.raises(TokenError):
        verify_token(secret, mod, "r", "publisher")
    pub = issue_token(secret, "r", "publisher", "host")
    assert verify_token(secret, pub, "r", "moderator").role == "publisher"
    with pytest.raises(TokenError):
        verify_token(secret, issue_token(secret, "r", "chat"), "r", "moderator")


def test_moderate_and_watch_frames() -> None:
    frame = decode_frame(
        json.dumps({"type": "moderate", "action": "ban", "target": "a", "nonce": "n"}), 500
    )
    assert isinstance(frame, Moderate) and frame.action == "ban" and frame.nonce == "n"
    assert frame.args["target"] == "a"
    assert isinstance(decode_frame('{"type":"watch","transport":"hls"}', 500), Watch)
    for bad, code in [
        ('{"type":"moderate"}', "unknown_action"),
        ('{"type":"moderate","action":"ban","nonce":5}', "bad_nonce"),
        ('{"type":"watch","transport":"webrtc"}', "malformed_frame"),
    ]:
        with pytest.raises(ProtocolError) as caught:
            decode_frame(bad, 500)
        assert caught.value.code == code


class SlowStore:
    """A store whose load_state waits until released (to interleave an event)."""

    def __init__(self, rows: list[StateRow]) -> None:
        self.rows = rows
        self.release = asyncio.Event()

    async def load_state(self, room: str) -> list[StateRow]:
        await self.release.wait()
        return list(self.rows)


async def test_events_arriving_while_a_room_loads_are_applied_after_it() -> None:
    store = SlowStore([row(RESTRICT + "a", "ban", v=1)])
    sent: list[tuple[str, str]] = []

    async def send(channel: str, payload: str) -> None:
        sent.append((channel, payload))

    ids = iter(range(100, 200))
    moderation = Moderation(store, send, lambda: next(ids), clock=lambda: T0)  # type: ignore[arg-type]
    first = asyncio.create_task(moderation.state("r"))
    second = asyncio.create_task(moderation.state("r"))  # shares the one load
    await asyncio.sleep(0)
    event = {
        "room": "r",
        "rows": [row(RESTRICT + "a", "lifted", v=2).to_json()],
        "frames": [{"type": "restriction", "identity": "a", "kind": None}],
    }
    room, frames = moderation.on_event(json.dumps(event))
    assert room == "r" and frames[0]["type"] == "restriction"
    store.release.set()
    st = await first
    assert st is await second
    assert "a" not in st.restrictions  # the unban that came during the load won
    assert moderation.on_event("{not json") == ("", [])
    assert MOD_CHANNEL.startswith("_")  # never a room name (rooms start with [A-Za-z0-9])
