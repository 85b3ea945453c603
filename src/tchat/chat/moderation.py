"""Chat moderation: who may act, the actions, and the checks on the post path.

Roles: the broadcaster (publisher token of the room) outranks moderators (a
`moderator` token), who outrank chatters. An actor may act on an identity it
outranks, never on itself or its equals; a moderator is never subject to slow
mode, the broadcaster to nothing.

Actions (WebSocket `moderate` frames and `POST /rooms/{room}/moderation/{action}`):
delete a message (tombstone), timeout an identity (1 s … 14 days), ban, unban,
slow mode (0 = off … 1 h), clear the visible history (one room tombstone). Each
writes its state rows and a log entry to the store, then publishes one event on
the bus channel MOD_CHANNEL, which every instance subscribes to: each applies the
rows to the rooms it holds in memory and fans the client frames out to its own
listeners of the room. A restarted instance loads a room's rows from the store at
the room's first use; a periodic refresh covers events a bus outage dropped.

The post path's check (`RoomState.check_post`) is a few dict lookups on memory.
`RoomState` is sans-I/O (the clock is passed in); `Moderation` is its I/O shell.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tchat.aio import cancel_and_wait
from tchat.chat.moderation_models import (
    CLEARED,
    RESTRICT,
    ROLE,
    SLOW_MODE,
    LogEntry,
    StateRow,
    StoredMessage,
)
from tchat.chat.protocol import ProtocolError
from tchat.chat.store import ChatStore, StoreUnavailable

log = logging.getLogger("tchat.chat.moderation")

MOD_CHANNEL = "_moderation"  # never a room: room names start with a letter or digit
MAX_TIMEOUT_S = 14 * 86400
MAX_SLOW_MODE_S = 3600
MAX_IDENTITY_CHARS = 128
MAX_REASON_CHARS = 200
RECENT_SCAN = 200  # delete_recent: the author's messages among the room's last 200
ACTIONS = ("delete", "timeout", "ban", "unban", "slow_mode", "clear")
RANKS = {"publisher": 2, "moderator": 1}
ROLE_NAMES = {"publisher": "broadcaster", "moderator": "moderator", "chat": "chatter"}
NO_EXPIRY = None


def rank(role: str) -> int:
    return RANKS.get(role, 0)


class ModerationError(ProtocolError):
    """A refused post or action: machine-readable code, HTTP status, extra fields
    (`until`, `retry_after`) for the error frame / JSON body."""

    def __init__(self, code: str, detail: str, status: int = 400, **fields: Any) -> None:
        super().__init__(code, detail)
        self.status = status
        self.fields = fields

    def body(self, nonce: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "detail": self.detail, **self.fields}
        if nonce is not None:
            out["nonce"] = nonce
        return out


class SlowGate(Protocol):
    """Slow mode across instances: one claim per (room, author) per period."""

    async def claim(self, key: str, seconds: float) -> float | None:
        """None if claimed now; else the seconds until the holder's claim ends."""


# --- sans-I/O core ----------------------------------------------------------------------
class RoomState:
    """One room's moderation state in memory, rebuilt from rows; the clock is passed in."""

    __slots__ = ("cleared", "last_post", "restrictions", "roles", "room", "rows", "slow_mode_s",
                 "used_at")  # fmt: skip

    def __init__(self, room: str) -> None:
        self.room = room
        self.rows: dict[str, StateRow] = {}
        self.restrictions: dict[str, StateRow] = {}  # identity → ban/timeout row
        self.roles: dict[str, str] = {}  # identity → publisher | moderator
        self.slow_mode_s = 0
        self.cleared = 0
        self.last_post: dict[str, float] = {}  # slow mode: author → time of last post
        self.used_at = 0.0

    def apply(self, row: StateRow) -> bool:
        """Take the row unless this state has a newer version of its key."""
        have = self.rows.get(row.key)
        if have is not None and have.version > row.version:
            return False
        self.rows[row.key] = row
        if row.key == SLOW_MODE:
            self.slow_mode_s = row.value
            if not row.value:
                self.last_post.clear()
        elif row.key == CLEARED:
            self.cleared = row.value
        elif row.key.startswith(ROLE):
            self.roles[row.key[len(ROLE) :]] = row.kind
        elif row.key.startswith(RESTRICT):
            identity = row.key[len(RESTRICT) :]
            if row.kind in ("ban", "timeout"):
                self.restrictions[identity] = row
            else:
                self.restrictions.pop(identity, None)
        return True

    def restriction(self, identity: str, now: float) -> StateRow | None:
        """The ban or timeout in force for `identity`, if any."""
        row = self.restrictions.get(identity)
        if row is None:
            return None
        if row.kind == "timeout" and row.until is not None and row.until <= now:
            return None  # expired by itself; the store's TTL drops the row
        return row

    def rank_of(self, identity: str) -> int:
        return rank(self.roles.get(identity, ""))

    def check_post(self, identity: str, role: str, now: float) -> None:
        """Raise ModerationError if `identity` (posting with a `role` token) may not post
        now; otherwise, in slow mode, count this post."""
        if role == "publisher":
            return
        row = self.restrictions.get(identity)
        if row is not None:
            refusal(row, now)
        if self.slow_mode_s and role != "moderator":
            last = self.last_post.get(identity)
            if last is not None and now - last < self.slow_mode_s:
                wait = self.slow_mode_s - (now - last)
                raise ModerationError(
                    "slow_mode",
                    f"slow mode: one message per {self.slow_mode_s} s; retry in {wait:.1f} s",
                    429,
                    retry_after=round(wait, 3),
                    slow_mode_s=self.slow_mode_s,
                )
            self.last_post[identity] = now
            if len(self.last_post) > 10_000:  # forget authors whose wait is over
                horizon = now - self.slow_mode_s
                self.last_post = {k: t for k, t in self.last_post.items() if t > horizon}

    def snapshot(self, now: float) -> dict[str, Any]:
        restrictions = []
        for identity in sorted(self.restrictions):
            row = self.restriction(identity, now)
            if row is not None:
                restrictions.append(restriction_json(identity, row))
        return {
            "room": self.room,
            "slow_mode_s": self.slow_mode_s,
            "cleared_before": str(self.cleared) if self.cleared else None,
            "restrictions": restrictions,
            "roles": {k: ROLE_NAMES.get(v, v) for k, v in sorted(self.roles.items())},
        }


def refusal(row: StateRow, now: float) -> None:
    """Raise the error a restricted author's post gets (nothing if a timeout is over)."""
    if row.kind == "ban":
        raise ModerationError("banned", "you are banned from this room's chat", 403, until=None)
    if row.kind == "timeout" and row.until is not None and row.until > now:
        left = row.until - now
        raise ModerationError(
            "timed_out",
            f"you are timed out until {_iso(row.until)} ({left:.0f} s left)",
            403,
            until=row.until,
            retry_after=round(left, 3),
        )


def restriction_json(identity: str, row: StateRow | None) -> dict[str, Any]:
    return {
        "identity": identity,
        "kind": row.kind if row is not None else None,
        "until": row.until if row is not None else None,
        "by": row.by if row is not None else None,
        "at": row.at if row is not None else None,
    }


def _iso(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


@dataclass(frozen=True, slots=True)
class Action:
    kind: str
    message_id: int | None = None
    target: str | None = None
    seconds: int = 0
    delete_recent: bool = False
    reason: str | None = None


def parse_action(kind: str, args: dict[str, Any]) -> Action:
    """Check an action's arguments (from a frame or a JSON body); raise saying what is wrong."""
    if kind not in ACTIONS:
        raise ModerationError(
            "unknown_action", f"unknown action {kind!r}; one of {', '.join(ACTIONS)}"
        )
    message_id = _message_id(args.get("message_id"))
    target = _identity(args.get("target"))
    reason = args.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise ModerationError(
            "bad_reason", f"reason must be a string of ≤ {MAX_REASON_CHARS} chars"
        )
    delete_recent = args.get("delete_recent", False)
    if not isinstance(delete_recent, bool):
        raise ModerationError("bad_request", "delete_recent must be true or false")
    seconds = 0
    if kind == "delete":
        if message_id is None:
            raise ModerationError("bad_message_id", "delete needs message_id")
    elif kind in ("timeout", "ban", "unban"):
        if (target is None) == (message_id is None) or (kind == "unban" and target is None):
            need = "target" if kind == "unban" else "target (an identity) or message_id"
            raise ModerationError("bad_target", f"{kind} needs {need}")
        if kind == "timeout":
            seconds = _seconds(args.get("seconds"), 1, MAX_TIMEOUT_S, "timeout")
    elif kind == "slow_mode":
        seconds = _seconds(args.get("seconds"), 0, MAX_SLOW_MODE_S, "slow mode")
    return Action(kind, message_id, target, seconds, delete_recent, reason or None)


def _message_id(value: object) -> int | None:
    if value is None:
        return None
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text.isdigit() or len(text) > 19 or int(text) >= 2**63:
        raise ModerationError("bad_message_id", "message_id must be a message id (decimal string)")
    return int(text)


def _identity(value: object) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_IDENTITY_CHARS
        or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)
    ):
        raise ModerationError(
            "bad_target", f"target must be an identity (1–{MAX_IDENTITY_CHARS} printable chars)"
        )
    return value


def _seconds(value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ModerationError("bad_duration", f"{what} needs seconds (a whole number)")
    if not low <= value <= high:
        raise ModerationError("bad_duration", f"{what} must be {low} … {high} s, not {int(value)}")
    return int(value)


@dataclass(slots=True)
class _Acting:
    """One action under way: who acts, where and when, and what it has changed so far
    (rows are applied and published only once every write is stored)."""

    room: str
    identity: str
    role: str
    st: RoomState
    now: float
    id: int  # the action's id: its log entry's and the version of the rows it writes
    rows: list[StateRow] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def row(self, key: str, kind: str, value: int, until: float | None = None) -> StateRow:
        return StateRow(self.room, key, kind, value, until, self.identity, self.now, self.id)


# --- I/O shell ------------------------------------------------------------------------------
Send = Callable[[str, str], Awaitable[None]]  # (channel, payload) over the bus


class Moderation:
    """Moderation state per room in memory, kept in step through the bus and the store."""

    def __init__(
        self,
        store: ChatStore,
        send: Send,
        next_id: Callable[[], int],
        clock: Callable[[], float] = time.time,
        gate: SlowGate | None = None,
        refresh_s: float = 30.0,
        idle_s: float = 600.0,
    ) -> None:
        self.store = store
        self._send = send
        self._next_id = next_id
        self.clock = clock
        self.gate = gate
        self.refresh_s = refresh_s
        self.idle_s = idle_s
        self._rooms: dict[str, RoomState] = {}
        self._loading: dict[str, tuple[asyncio.Future[RoomState], list[StateRow]]] = {}
        self._noting: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_loop(), name="chat-moderation-refresh")

    async def close(self) -> None:
        await cancel_and_wait(self._refresher, *self._tasks)

    # --- state ----------------------------------------------------------------------------
    async def state(self, room: str) -> RoomState:
        """The room's state: from memory, else loaded from the store (once, shared)."""
        st = self._rooms.get(room)
        if st is not None:
            st.used_at = self.clock()
            return st
        pending = self._loading.get(room)
        if pending is not None:
            return await asyncio.shield(pending[0])
        fut: asyncio.Future[RoomState] = asyncio.get_running_loop().create_future()
        buffered: list[StateRow] = []
        self._loading[room] = (fut, buffered)
        try:
            rows = await self.store.load_state(room)
        except StoreUnavailable as exc:
            error = ModerationError("store_unavailable", str(exc), 503)
            fut.set_exception(error)
            fut.exception()  # retrieved: waiters (if any) get it too
            raise error from None
        except BaseException:
            fut.cancel()
            raise
        finally:
            del self._loading[room]
        st = RoomState(room)
        for row in rows + buffered:  # events that arrived while loading, replayed in order
            st.apply(row)
        st.used_at = self.clock()
        self._rooms[room] = st
        fut.set_result(st)
        return st

    def cached(self, room: str) -> RoomState | None:
        return self._rooms.get(room)

    async def check_post(self, room: str, identity: str, role: str) -> None:
        """Raise ModerationError if the post must be refused (the post path's check)."""
        st = self._rooms.get(room) or await self.state(room)
        now = self.clock()
        st.used_at = now
        if role != "chat" and st.roles.get(identity) != role and rank(role) > st.rank_of(identity):
            task = asyncio.create_task(self._note_quietly(room, identity, role))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        slow = st.slow_mode_s
        st.check_post(identity, role, now)
        if slow and self.gate is not None and role == "chat":
            # other instances may have taken this author's post of the period
            wait = await self.gate.claim(f"{room}\x00{identity}", slow)
            if wait is not None:
                raise ModerationError(
                    "slow_mode",
                    f"slow mode: one message per {slow} s; retry in {wait:.1f} s",
                    429,
                    retry_after=round(wait, 3),
                    slow_mode_s=slow,
                )

    def release_post(self, room: str, identity: str) -> None:
        """The post failed after check_post (e.g. store down): its slow-mode slot is free."""
        st = self._rooms.get(room)
        if st is not None:
            st.last_post.pop(identity, None)

    async def _note_quietly(self, room: str, identity: str, role: str) -> None:
        try:
            await self.note_role(room, identity, role)
        except ModerationError as exc:
            log.warning("role of %s in %s not stored: %s", identity, room, exc.detail)

    async def note_role(self, room: str, identity: str, role: str) -> None:
        """Remember that `identity` holds a broadcaster/moderator token in `room` (once)."""
        if not rank(role) or (room, identity) in self._noting:
            return
        st = await self.state(room)
        if st.rank_of(identity) >= rank(role):
            return
        self._noting.add((room, identity))
        try:
            now = self.clock()
            row = StateRow(room, ROLE + identity, role, 0, None, identity, now, self._next_id())
            await self._put(row, NO_EXPIRY)
            st.apply(row)
            await self._publish(room, [row], [])
        finally:
            self._noting.discard((room, identity))

    # --- actions ----------------------------------------------------------------------------
    async def act(self, room: str, identity: str, role: str, action: Action) -> LogEntry:
        """Carry out `action` by `identity` (token role `role`) in `room`; the log entry."""
        st, now = await self._actor_state(room, identity, role)
        acting = _Acting(room, identity, role, st, now, self._next_id())
        target = action.target
        if action.kind in ("delete", "timeout", "ban") and action.message_id is not None:
            target = await self._by_message(acting, action, action.message_id)
        if action.kind in ("timeout", "ban"):
            assert target is not None
            await self._restrict(acting, action, target)
        elif action.kind == "unban":
            assert target is not None
            await self._unban(acting, target)
        elif action.kind == "slow_mode":
            row = acting.row(SLOW_MODE, "", action.seconds)
            await self._write(
                acting, row, NO_EXPIRY, {"type": "slow_mode", "seconds": action.seconds}
            )
            acting.detail = {"seconds": action.seconds}
        elif action.kind == "clear":
            row = acting.row(CLEARED, "", acting.id)
            await self._write(acting, row, NO_EXPIRY, {"type": "cleared", "before": str(acting.id)})
            acting.detail = {"before": str(acting.id)}
        return await self._record(acting, action, target)

    async def _actor_state(self, room: str, identity: str, role: str) -> tuple[RoomState, float]:
        """The room's state and the action's time, once `identity` may moderate at all."""
        if not rank(role):
            raise ModerationError(
                "not_moderator",
                f"a {role} token cannot moderate; it needs a moderator or publisher token",
                403,
            )
        st = await self.state(room)
        if self._tasks:  # roles the post path is noting: known before ranks are compared
            await asyncio.wait(self._tasks, timeout=5.0)
        now = self.clock()
        if role != "publisher" and (held := st.restriction(identity, now)) is not None:
            raise ModerationError(
                "actor_restricted", f"you cannot moderate while {_held(held)}", 403
            )
        await self.note_role(room, identity, role)
        return st, now

    async def _by_message(self, acting: _Acting, action: Action, message_id: int) -> str:
        """The message's author (the target); a delete tombstones the message here."""
        stored = await self._message(acting.room, message_id)
        author = stored.message.author
        if action.kind == "delete":
            self._may_act_on(acting.st, acting.identity, acting.role, author, allow_self=True)
            if stored.deleted:
                raise ModerationError(
                    "already_deleted",
                    f"message {message_id} was deleted by {stored.deleted_by}",
                    409,
                )
            await self._tombstone(acting.room, [stored], acting.identity, acting.now)
            acting.frames.append(deleted_frame([stored.message.id]))
            acting.detail = {
                "message_id": str(stored.message.id),
                "author": author,
                "text": stored.message.text,
            }
        return author

    async def _restrict(self, acting: _Acting, action: Action, target: str) -> None:
        """A timeout or a ban, and with delete_recent the target's recent messages gone."""
        self._may_act_on(acting.st, acting.identity, acting.role, target)
        until = acting.now + action.seconds if action.kind == "timeout" else None
        row = acting.row(RESTRICT + target, action.kind, action.seconds, until)
        # a timeout's row expires with it; a ban's stays until unbanned
        ttl_s = action.seconds if until is not None else NO_EXPIRY
        await self._write(acting, row, ttl_s, restriction_frame(target, row))
        if until is not None:
            acting.detail = {"seconds": action.seconds, "until": until}
        if action.delete_recent:
            ids = await self._delete_recent(
                acting.room, target, acting.identity, acting.now, acting.st.cleared
            )
            acting.detail["deleted"] = [str(i) for i in ids]
            if ids:
                acting.frames.append(deleted_frame(ids))

    async def _unban(self, acting: _Acting, target: str) -> None:
        self._may_act_on(acting.st, acting.identity, acting.role, target)
        held = acting.st.restriction(target, acting.now)
        if held is None:
            raise ModerationError("not_restricted", f"{target!r} is not banned or timed out", 404)
        row = acting.row(RESTRICT + target, "lifted", 0)
        await self._write(acting, row, NO_EXPIRY, restriction_frame(target, None))
        acting.detail = {"lifted": held.kind}

    async def _write(
        self, acting: _Acting, row: StateRow, ttl_s: int | None, frame: dict[str, Any]
    ) -> None:
        """Store the row; it is applied and published with the others once all are stored."""
        await self._put(row, ttl_s)
        acting.rows.append(row)
        acting.frames.append(frame)

    async def _record(self, acting: _Acting, action: Action, target: str | None) -> LogEntry:
        if action.reason:
            acting.detail["reason"] = action.reason
        entry = LogEntry(
            acting.id,
            acting.room,
            acting.identity,
            ROLE_NAMES[acting.role],
            action.kind,
            target,
            acting.detail,
            acting.now,
        )
        for row in acting.rows:
            acting.st.apply(row)
        # the effect is stored: publish it now, then log it (one round trip less before
        # other instances and the clients see it)
        await self._publish(acting.room, acting.rows, acting.frames)
        try:
            await self.store.append_log(entry)
        except StoreUnavailable as exc:
            log.warning("moderation log entry not stored (the action is): %s", exc)
        return entry

    def _may_act_on(
        self, st: RoomState, identity: str, role: str, target: str, allow_self: bool = False
    ) -> None:
        if target == identity:
            if allow_self:
                return
            raise ModerationError("target_is_self", "you cannot act on yourself", 403)
        target_rank = st.rank_of(target)
        if target_rank >= rank(role):
            code = "target_is_broadcaster" if target_rank == 2 else "target_is_moderator"
            who = "the broadcaster" if target_rank == 2 else "a moderator"
            raise ModerationError(code, f"{target!r} is {who}: a {role} cannot act on them", 403)

    async def _message(self, room: str, message_id: int) -> StoredMessage:
        try:
            stored = await self.store.get_message(room, message_id)
        except StoreUnavailable as exc:
            raise ModerationError("store_unavailable", str(exc), 503) from None
        if stored is None:
            raise ModerationError(
                "unknown_message", f"no message {message_id} in room {room!r}", 404
            )
        return stored

    async def _tombstone(
        self, room: str, messages: list[StoredMessage], by: str, at: float
    ) -> None:
        try:
            await self.store.tombstone(room, messages, by, at)
        except StoreUnavailable as exc:
            raise ModerationError("store_unavailable", str(exc), 503) from None

    async def _delete_recent(
        self, room: str, author: str, by: str, now: float, cleared: int
    ) -> list[int]:
        try:
            recent = await self.store.history(room, RECENT_SCAN, None, cleared or None)
            found = [m for m in recent if m.author == author]
            stored = [await self.store.get_message(room, m.id) for m in found]
        except StoreUnavailable as exc:
            raise ModerationError("store_unavailable", str(exc), 503) from None
        mine = [s for s in stored if s is not None and not s.deleted]
        if mine:
            await self._tombstone(room, mine, by, now)
        return [s.message.id for s in mine]

    async def _put(self, row: StateRow, ttl_s: int | None) -> None:
        try:
            await self.store.put_state(row, ttl_s)
        except StoreUnavailable as exc:
            raise ModerationError("store_unavailable", str(exc), 503) from None

    async def _publish(self, room: str, rows: list[StateRow], frames: list[dict[str, Any]]) -> None:
        payload = {"room": room, "rows": [r.to_json() for r in rows], "frames": frames}
        await self._send(MOD_CHANNEL, json.dumps(payload, separators=(",", ":")))

    def on_event(self, payload: str) -> tuple[str, list[dict[str, Any]]]:
        """An event from the bus (any instance, this one included): apply its rows to the
        room if held or loading; return (room, client frames for local listeners)."""
        try:
            event = json.loads(payload)
            room = str(event["room"])
            rows = [StateRow.from_json(r) for r in event.get("rows", ())]
            frames = list(event.get("frames", ()))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("malformed moderation event dropped: %s", exc)
            return "", []
        st = self._rooms.get(room)
        if st is not None:
            for row in rows:
                st.apply(row)
        elif (pending := self._loading.get(room)) is not None:
            pending[1].extend(rows)
        return room, frames

    # --- reads --------------------------------------------------------------------------
    async def read_log(self, room: str, limit: int, before: int | None) -> list[LogEntry]:
        try:
            return await self.store.read_log(room, limit, before)
        except StoreUnavailable as exc:
            raise ModerationError("store_unavailable", str(exc), 503) from None

    async def hello(self, room: str, identity: str | None, role: str | None) -> dict[str, Any]:
        """What a client learns on connecting: its role, own restriction, slow mode."""
        st = await self.state(room)
        held = st.restriction(identity, self.clock()) if identity else None
        return {
            "identity": identity,
            "role": ROLE_NAMES.get(role or "", "reader"),
            "can_moderate": bool(role and rank(role)),
            "restriction": restriction_json(identity, held) if identity and held else None,
            "slow_mode_s": st.slow_mode_s,
        }

    # --- upkeep ---------------------------------------------------------------------------
    async def _refresh_loop(self) -> None:
        """Drop rooms idle for idle_s; reload the others' rows (events lost while the bus
        was down are picked up within refresh_s)."""
        while True:
            await asyncio.sleep(self.refresh_s)
            now = self.clock()
            for room, st in list(self._rooms.items()):
                if now - st.used_at > self.idle_s:
                    del self._rooms[room]
                    continue
                try:
                    rows = await self.store.load_state(room)
                except StoreUnavailable:
                    continue
                for row in rows:
                    st.apply(row)


def _held(row: StateRow) -> str:
    return "banned" if row.kind == "ban" else f"timed out until {_iso(row.until or 0)}"


def deleted_frame(ids: list[int]) -> dict[str, Any]:
    return {"type": "deleted", "ids": [str(i) for i in ids]}


def restriction_frame(identity: str, row: StateRow | None) -> dict[str, Any]:
    """What every listener of the room hears (not which moderator acted: that is in the
    log, for moderators)."""
    return {
        "type": "restriction",
        "identity": identity,
        "kind": row.kind if row is not None else None,
        "until": row.until if row is not None else None,
    }
