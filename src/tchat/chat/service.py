"""The chat service: post (rate limit → store → fan-out) and room listeners.

A message is acknowledged only after the store has it. Fan-out goes through the
bus (in-process, or Redis between instances) as one pre-encoded frame, written to
every local listener's bounded queue without awaiting it (websockets' broadcast
model). A listener whose queue fills up is too slow: it is closed with 1013
rather than let it hold memory or delay the room.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from tchat.aio import cancel_and_wait
from tchat.bus import Bus, BusUnavailable
from tchat.chat.ids import IdGenerator, id_time_ms
from tchat.chat.models import Message
from tchat.chat.protocol import ProtocolError, RateLimiter, encode
from tchat.chat.store import ChatStore, IdTaken, StoreBusy, StoreUnavailable
from tchat.metrics import CHAT_LISTENERS, CHAT_MESSAGES, CHAT_WRITE_SECONDS

log = logging.getLogger("tchat.chat")

QUEUE_FRAMES = 1024
ID_ATTEMPTS = 3  # a fresh id after a collision; three in a row means something is wrong


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
    ) -> None:
        self.store = store
        self.bus = bus
        self.node_id = node_id
        self.ids = IdGenerator(node_id)
        self.limiter = RateLimiter(rate_per_s, burst, clock)
        self._rooms: dict[str, set[Listener]] = {}

    async def start(self) -> None:
        await self.store.start()
        await self.bus.start(self._deliver)
        if self.node_id is None:
            # Ids from two instances must never collide: a collision would overwrite an
            # acknowledged message. The bus hands out distinct node numbers when it can.
            node = await self.bus.allocate_node()
            if node is not None:
                self.ids = IdGenerator(node)
        log.info("chat ids from node %d", self.ids.node)

    async def close(self) -> None:
        await self.bus.close()
        await self.store.close()

    async def post(self, room: str, author: str, text: str) -> Message:
        """Store and fan out; raises ProtocolError (rate_limited, store_busy,
        store_unavailable)."""
        if not self.limiter.allow(author):
            wait = self.limiter.retry_after(author)
            raise ProtocolError("rate_limited", f"too many messages; retry in {wait:.1f}s")
        started = time.perf_counter()
        for attempt in range(ID_ATTEMPTS):
            message_id = self.ids.next_id()
            message = Message(message_id, room, author, text, id_time_ms(message_id) / 1000.0)
            try:
                await self.store.append(message)
                break
            except IdTaken as exc:
                # another writer drew the same id: post again under a fresh one
                log.warning("chat id collision (attempt %d): %s", attempt + 1, exc)
            except StoreBusy as exc:
                raise ProtocolError("store_busy", str(exc)) from None
            except StoreUnavailable as exc:
                raise ProtocolError("store_unavailable", str(exc)) from None
        else:
            raise ProtocolError("store_unavailable", "message ids keep colliding; retry")
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

    async def join(self, room: str, listener: Listener) -> None:
        listeners = self._rooms.setdefault(room, set())
        if not listeners:
            await self.bus.subscribe(room)
        listeners.add(listener)
        CHAT_LISTENERS.inc()

    async def leave(self, room: str, listener: Listener) -> None:
        listeners = self._rooms.get(room)
        if listeners is None or listener not in listeners:
            return
        listeners.discard(listener)
        CHAT_LISTENERS.dec()
        await listener.close()
        if not listeners:
            del self._rooms[room]
            await self.bus.unsubscribe(room)

    def listener_count(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    def _deliver(self, room: str, frame: str) -> None:
        for listener in tuple(self._rooms.get(room, ())):
            listener.offer(frame)
