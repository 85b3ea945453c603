"""The chat service: post (rate limit → store → fan-out) and room listeners.

A message is acknowledged only after the store has it. Fan-out goes through the
bus (in-process, or Redis between instances) as one pre-encoded frame, written to
every local listener's bounded queue without awaiting it (websockets' broadcast
model). A listener whose queue fills up is too slow: it is closed with 1013
rather than let it hold memory or delay the room.

Moderation (`chat/moderation.py`) checks each post against the room's restrictions
held in memory, and its events travel on the bus channel MOD_CHANNEL, which every
instance subscribes to; presence (`chat/presence.py`) counts and pushes every 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tchat.aio import cancel_and_wait
from tchat.bus import Bus, BusUnavailable
from tchat.chat.ids import IdGenerator, id_time_ms
from tchat.chat.models import Message
from tchat.chat.moderation import MOD_CHANNEL, Moderation
from tchat.chat.presence import Presence
from tchat.chat.protocol import ProtocolError, RateLimiter, encode
from tchat.chat.shared import MemoryShared, Shared
from tchat.chat.store import ChatStore, IdTaken, StoreBusy, StoreUnavailable
from tchat.metrics import CHAT_LISTENERS, CHAT_MESSAGES, CHAT_WRITE_SECONDS

log = logging.getLogger("tchat.chat")

QUEUE_FRAMES = 1024
ID_ATTEMPTS = 3  # a fresh id after a collision; three in a row means something is wrong


@dataclass
class _Settling:
    """A room's subscription lock, kept while any caller holds or awaits it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Listener:
    """One WebSocket's outgoing side: a bounded queue drained by its own task."""

    def __init__(
        self, send: Callable[[str], Awaitable[None]], on_overflow: Callable[[], None]
    ) -> None:
        self._send = send
        self._on_overflow = on_overflow
        self._queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_FRAMES)
        self._task = asyncio.create_task(self._drain())
        self.overflowed = False

    def offer(self, frame: str) -> None:
        if self.overflowed:
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflowed = True
            self._on_overflow()

    async def _drain(self) -> None:
        try:
            while True:
                await self._send(await self._queue.get())
        except Exception:
            return  # the socket is gone; the receive side notices and leaves the room

    async def close(self) -> None:
        await cancel_and_wait(self._task)


class ChatService:
    def __init__(
        self,
        store: ChatStore,
        bus: Bus,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        node_id: int | None = None,
        shared: Shared | None = None,
        moderation: bool = True,
    ) -> None:
        self.store = store
        self.bus = bus
        self.node_id = node_id
        self.ids = IdGenerator(node_id)
        self.limiter = RateLimiter(rate_per_s, burst, clock)
        self._rooms: dict[str, set[Listener]] = {}
        self._settling: dict[str, _Settling] = {}
        self.shared: Shared = shared or MemoryShared()
        # moderation=False only for measuring what the checks cost (tests/performance)
        self.moderation: Moderation | None = (
            Moderation(
                store,
                self._send,
                lambda: self.ids.next_id(),
                gate=self.shared if self.shared.name == "redis" else None,
            )
            if moderation
            else None
        )
        self.presence = Presence(self.shared, self.listener_counts, self._deliver)

    async def start(self) -> None:
        await self.store.start()
        await self.bus.start(self._deliver)
        await self.bus.subscribe(MOD_CHANNEL)  # every instance hears every room's actions
        await self.shared.start()
        if self.moderation is not None:
            await self.moderation.start()
        await self.presence.start()
        if self.node_id is None:
            # Ids from two instances must never collide: a collision would overwrite an
            # acknowledged message. The bus hands out distinct node numbers when it can,
            # else the store leases one (CQL) or refuses a taken id itself (SQLite).
            node = await self.bus.allocate_node()
            if node is None:
                node = await self.store.claim_node(self._move_node)
            if node is not None:
                self.ids = IdGenerator(node)
        log.info("chat ids from node %d", self.ids.node)

    def _move_node(self, node: int) -> None:
        log.warning("chat ids now from node %d", node)
        self.ids = IdGenerator(node)

    async def close(self) -> None:
        await self.presence.close()
        if self.moderation is not None:
            await self.moderation.close()
        await self.shared.close()
        await self.bus.close()
        await self.store.close()

    async def post(self, room: str, author: str, text: str, role: str = "chat") -> Message:
        """Store and fan out; raises ProtocolError (rate_limited, store_busy,
        store_unavailable) or ModerationError (banned, timed_out, slow_mode)."""
        if not self.limiter.allow(author):
            wait = self.limiter.retry_after(author)
            raise ProtocolError("rate_limited", f"too many messages; retry in {wait:.1f}s")
        if self.moderation is not None:
            await self.moderation.check_post(room, author, role)
        started = time.perf_counter()
        try:
            message = await self._append(room, author, text)
        except ProtocolError:
            if self.moderation is not None:
                self.moderation.release_post(room, author)
            raise
        CHAT_WRITE_SECONDS.observe(time.perf_counter() - started)
        CHAT_MESSAGES.labels(self.store.name).inc()
        frame = encode({"type": "message", "message": message.to_json()})
        try:
            await self.bus.publish(room, frame)
        except BusUnavailable as exc:
            # Stored already; other instances' listeners get it from history.
            log.warning("fan-out beyond this instance failed: %s", exc)
            self._deliver(room, frame)
        return message

    async def _append(self, room: str, author: str, text: str) -> Message:
        """Store a new message, under a fresh id if another writer drew the same one."""
        for attempt in range(ID_ATTEMPTS):
            message_id = self.ids.next_id()
            message = Message(message_id, room, author, text, id_time_ms(message_id) / 1000.0)
            try:
                await self.store.append(message)
                return message
            except IdTaken as exc:
                log.warning("chat id collision (attempt %d): %s", attempt + 1, exc)
            except StoreBusy as exc:
                raise ProtocolError("store_busy", str(exc)) from None
            except StoreUnavailable as exc:
                raise ProtocolError("store_unavailable", str(exc)) from None
        raise ProtocolError("store_unavailable", "message ids keep colliding; retry")

    async def join(self, room: str, listener: Listener) -> None:
        # The room's membership changes before any await, so a join racing a leave
        # can neither land in a set the leave then drops nor be left unsubscribed.
        self._rooms.setdefault(room, set()).add(listener)
        CHAT_LISTENERS.inc()
        await self._settle(room)

    async def leave(self, room: str, listener: Listener) -> None:
        listeners = self._rooms.get(room)
        if listeners is None or listener not in listeners:
            return
        listeners.discard(listener)
        CHAT_LISTENERS.dec()
        if not listeners:
            del self._rooms[room]
        try:
            await listener.close()
        finally:
            await self._settle(room)

    async def _settle(self, room: str) -> None:
        """Subscribe the bus to a room while anyone here listens to it, else not.

        One change per room at a time, each reading membership once it holds the
        room's lock: whatever joins and leaves interleave, the last to settle
        leaves the subscription matching the room as it then is."""
        entry = self._settling.setdefault(room, _Settling())
        entry.users += 1
        try:
            async with entry.lock:
                # both idempotent: the bus's own channel set is the one record of it
                if room in self._rooms:
                    await self.bus.subscribe(room)
                else:
                    await self.bus.unsubscribe(room)
        finally:
            entry.users -= 1
            if not entry.users:
                del self._settling[room]

    def listener_counts(self) -> dict[str, int]:
        return {room: len(listeners) for room, listeners in self._rooms.items()}

    async def _send(self, channel: str, payload: str) -> None:
        """Publish on the bus; if it is down, at least this instance gets it."""
        try:
            await self.bus.publish(channel, payload)
        except BusUnavailable as exc:
            log.warning("bus publish on %s failed: %s", channel, exc)
            self._deliver(channel, payload)

    def _deliver(self, room: str, frame: str) -> None:
        if room == MOD_CHANNEL:
            if self.moderation is not None:
                target, frames = self.moderation.on_event(frame)
                for event in frames if target and target != MOD_CHANNEL else ():
                    self._deliver(target, encode(event))
            return
        for listener in tuple(self._rooms.get(room, ())):
            listener.offer(frame)
