"""Presence: per room, how many watch and how many are in chat, across instances.

Watching = WHEP viewer sessions (the SFU's count, handed in by the web layer) plus
watch pages playing HLS (they say so on their chat socket: `{"type": "watch",
"transport": "hls"}`); in chat = open chat WebSockets of the room (readers too).
Every `interval_s` (2 s) each instance counts what it already holds in memory,
exchanges its counts through `Shared` (Redis keys with expiry, or in-process), and
pushes `{"type": "presence", "watching", "chatting"}` to its chat listeners of each
room whose totals changed: at most one push per room per interval, no store write
and no per-connection write anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from tchat.aio import cancel_and_wait
from tchat.chat.protocol import encode
from tchat.chat.shared import Counts, Shared

log = logging.getLogger("tchat.chat.presence")


class Presence:
    def __init__(
        self,
        shared: Shared,
        chat_counts: Callable[[], dict[str, int]],
        deliver: Callable[[str, str], None],
        interval_s: float = 2.0,
    ) -> None:
        self.instance = uuid.uuid4().hex[:12]
        self.shared = shared
        self.chat_counts = chat_counts
        self.deliver = deliver
        self.interval_s = interval_s
        # WHEP viewers per room on this instance: pages.running points it at the SFU (Services)
        self.watchers: Callable[[], dict[str, int]] = dict
        self.hls: dict[str, int] = {}
        self.totals: Counts = {}
        self._pushed: Counts = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="chat-presence")

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    def hls_join(self, room: str) -> None:
        self.hls[room] = self.hls.get(room, 0) + 1

    def hls_leave(self, room: str) -> None:
        left = self.hls.get(room, 0) - 1
        if left > 0:
            self.hls[room] = left
        else:
            self.hls.pop(room, None)

    def of(self, room: str) -> dict[str, Any]:
        watching, chatting = self.totals.get(room, (0, 0))
        return {"watching": watching, "chatting": chatting}

    def local_counts(self) -> Counts:
        try:
            watch = self.watchers()
        except Exception as exc:  # the SFU not up yet, or going down: count no viewers
            log.debug("no viewer counts: %s", exc)
            watch = {}
        chat = self.chat_counts()
        out: Counts = {}
        for room in set(watch) | set(self.hls) | set(chat):
            counts = (watch.get(room, 0) + self.hls.get(room, 0), chat.get(room, 0))
            if counts != (0, 0):
                out[room] = counts
        return out

    async def tick(self) -> None:
        """Count, exchange, push the rooms whose totals changed to local listeners."""
        self.totals = await self.shared.exchange(
            self.instance, self.local_counts(), 3 * self.interval_s
        )
        listened = self.chat_counts()
        for room in listened:
            now = self.totals.get(room, (0, 0))
            if self._pushed.get(room) != now:
                self._pushed[room] = now
                frame = {"type": "presence", "watching": now[0], "chatting": now[1]}
                self.deliver(room, encode(frame))
        for room in [r for r in self._pushed if r not in listened]:
            del self._pushed[room]

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick()
            except Exception:  # never let one bad round stop presence
                log.exception("presence round failed")
