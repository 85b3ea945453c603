"""Redis pub/sub bus: several `tchat serve` processes share rooms.

One subscriber connection per process, owned by one task (`_run`): `subscribe` and
`unsubscribe` only change the set of wanted channels and wake it; the task alone
sends SUBSCRIBE/UNSUBSCRIBE and reads, so nothing else reads or writes that
connection. (Two coroutines sharing it broke fan-out for good after an idle spell:
the first SUBSCRIBE after ≥ 15 s ran redis-py's health-check PING while the reader
read the same socket, one of them saw "Connection closed by server", and the
subscription was never made.)

With no channel wanted the connection is closed, so there is nothing to go stale
while no one listens (a server `timeout`, a proxy or a NAT would close it); the
next listener opens a fresh one. While subscribed, a PING every PING_S proves the
connection alive: no traffic for DEAD_S means it is dead. On any failure the task
reconnects with backoff and subscribes every wanted channel again. Meanwhile
`publish` still reaches Redis (for the other instances) and this process's own
listeners get the message directly. `health()` says which state it is in; /healthz
and the `tchat_bus_*` metrics report it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tchat.aio import cancel_and_wait
from tchat.bus.base import BusUnavailable, Handler
from tchat.metrics import BUS_CHANNELS, BUS_RECONNECTS, BUS_UP

log = logging.getLogger("tchat.bus.redis")
PREFIX = "tchat:"
PING_S = 5.0  # a PING this often while subscribed
DEAD_S = 3 * PING_S  # nothing read for this long: the connection is dead
POLL_S = 0.25  # read slice: how soon a new channel is subscribed
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
CONFIRM_S = 3.0  # subscribe() waits this long for Redis to confirm, at most


class RedisBus:
    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aioredis.Redis | None = None  # publish, node numbers
        self._sub_client: aioredis.Redis | None = None  # the subscriber's connection
        self._handler: Handler | None = None
        self._task: asyncio.Task[None] | None = None
        self._wanted: set[str] = set()
        self._wake = asyncio.Event()
        self._confirm: dict[str, list[asyncio.Future[None]]] = {}
        self._live: set[str] = set()  # confirmed on the current connection
        self.state = "idle"  # idle (nothing wanted), connected, reconnecting
        self.since = time.time()
        self.reconnects = 0
        self.last_error = ""

    # -- Bus -----------------------------------------------------------------------
    async def start(self, handler: Handler) -> None:
        self._handler = handler
        # A pooled connection idle past a server `timeout` (or a proxy's) is closed
        # under us: one idle over a second is PINGed before use and replaced if that
        # fails (one retry on a fresh connection; a PUBLISH lost mid-flight is retried
        # once too, so a listener may rarely see a message twice, never lose it).
        self._client = aioredis.from_url(
            self.url,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=1,
            retry=Retry(NoBackoff(), 1),
        )
        # No retries inside redis-py for the subscriber (its default backs off for tens
        # of seconds, unseen): a failure surfaces at once and `_run` reconnects.
        self._sub_client = aioredis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        BUS_UP.set(1)
        self._task = asyncio.create_task(self._run(), name="bus-redis-subscriber")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        for client in (self._client, self._sub_client):
            if client is not None:
                await client.aclose()

    async def publish(self, channel: str, payload: str) -> None:
        assert self._client is not None
        try:
            await self._client.publish(PREFIX + channel, payload)
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis publish failed: {exc}") from None
        if self.state != "connected" and channel in self._wanted and self._handler is not None:
            # our subscription is down: Redis will not bring it back to us
            self._handler(channel, payload)

    async def subscribe(self, channel: str) -> None:
        """Returns once Redis confirmed the subscription (at once while reconnecting, or
        after CONFIRM_S: the subscriber keeps trying and local delivery covers the gap)."""
        self._wanted.add(channel)
        BUS_CHANNELS.set(len(self._wanted))
        if channel in self._live:
            return
        self._wake.set()
        if self.state == "reconnecting":
            return  # do not hold the listener up: local delivery covers the outage
        done = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(channel, []).append(done)
        try:
            await asyncio.wait_for(asyncio.shield(done), CONFIRM_S)
        except TimeoutError:
            log.debug("redis subscribe %s not confirmed yet (%s)", channel, self.state)

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        BUS_CHANNELS.set(len(self._wanted))
        self._wake.set()

    async def allocate_node(self) -> int | None:
        """Instances sharing this Redis take turns through 1024 node numbers."""
        assert self._client is not None
        try:
            return (int(await self._client.incr(PREFIX + "chat:node")) - 1) % 1024
        except (RedisError, OSError) as exc:
            log.warning("no node number from redis (%s); using a random one", exc)
            return None

    def health(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "ok": self.state != "reconnecting",
            "state": self.state,
            "since": round(self.since, 3),
            "channels": len(self._wanted),
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    # -- the subscriber task -----------------------------------------------------------
    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()
            BUS_UP.set(0 if state == "reconnecting" else 1)

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._wanted:
                self._set_state("idle")
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._session()
                failures = 0
            except Exception as exc:  # RedisError, OSError, or a bug: reconnect, never die
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.state != "reconnecting":
                    log.warning("redis bus subscriber lost: %s; reconnecting", self.last_error)
                self._set_state("reconnecting")
                self.reconnects += 1
                BUS_RECONNECTS.inc()
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    async def _session(self) -> None:
        """One subscriber connection, until nothing is wanted (returns) or it fails
        (raises)."""
        assert self._sub_client is not None
        pubsub = self._sub_client.pubsub()
        subscribed: set[str] = set()  # asked for on this connection
        self._live = set()
        try:
            await pubsub.connect()  # type: ignore[no-untyped-call]
            last_rx = last_ping = asyncio.get_running_loop().time()
            while True:
                wanted = set(self._wanted)
                if not wanted:
                    return  # closed below: nothing to keep alive while no one listens
                if wanted - subscribed:
                    await pubsub.subscribe(*(PREFIX + c for c in wanted - subscribed))
                    subscribed |= wanted
                if subscribed - wanted:
                    await pubsub.unsubscribe(*(PREFIX + c for c in subscribed - wanted))
                    subscribed &= wanted
                    self._live &= wanted
                now = asyncio.get_running_loop().time()
                if now - last_ping >= PING_S:
                    await pubsub.ping()
                    last_ping = now
                if now - last_rx > DEAD_S:
                    raise ConnectionError(f"nothing from redis for {now - last_rx:.0f}s")
                msg = await pubsub.get_message(timeout=POLL_S)
                if msg is not None:
                    last_rx = asyncio.get_running_loop().time()
                    self._on_message(msg)
        finally:
            self._live = set()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        channel = msg.get("channel")
        name = channel.decode() if isinstance(channel, bytes) else str(channel or "")
        name = name[len(PREFIX) :] if name.startswith(PREFIX) else name
        if kind == "subscribe":
            if name in self._wanted:
                self._live.add(name)
            if self.state != "connected":
                if self.state == "reconnecting":
                    log.info("redis bus subscriber back after %.1fs", time.time() - self.since)
                self._set_state("connected")
            for done in self._confirm.pop(name, []):
                if not done.done():
                    done.set_result(None)
        elif kind == "message" and self._handler is not None:
            data = msg["data"]
            self._handler(name, data.decode() if isinstance(data, bytes) else str(data))
