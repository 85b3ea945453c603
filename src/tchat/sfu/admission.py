"""Refusals (`SessionError`) and the admission of new sessions at the rate their
handshakes complete (join storms).

A thousand viewers arriving at once (a popular room starting, a room's viewers coming
back together) would otherwise start a thousand ICE/DTLS handshakes together: each
gets a thousandth of the CPU, all of them slow down together, DTLS retransmits add
work, and many pass SFU_CONNECT_TIMEOUT and fail. Instead at most `limit` sessions
handshake at once; the next requests wait here in arrival order for a slot (a WHEP
request is held open, costing only its coroutine) and each goes on as soon as one is
free, and while the SFU is over SFU_MAX_LOAD no slot is (the handshakes of a storm
push the load up for a moment: its viewers wait rather than being refused). A request
that would wait longer than `max_wait_s` gets 503 with a Retry-After from the measured
admission rate. (Refusing at once when the queue looked too long for the measured
rate refused a third of a storm this box then served: the rate is lowest just when a
storm begins.)
Publishers never wait: a viewer storm must not keep the broadcaster out.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

RATE_WINDOW_S = 5.0  # admissions counted over this long for the Retry-After estimate


def release(counter: Counter[str], keys: Iterable[str]) -> None:
    """Count `keys` down; a key at 0 is dropped, so the counter holds live entries only."""
    for key in keys:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]


class SessionError(Exception):
    """A WHIP/WHEP request that cannot be served; `status` is the HTTP status,
    `retry_after` (seconds) when the client should come back later."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class JoinQueue:
    def __init__(
        self,
        limit: int,
        max_wait_s: float,
        handshaking: Callable[[], int],
        connecting: Counter[str],
        clock: Callable[[], float],
        overloaded: Callable[[], bool] = lambda: False,
    ) -> None:
        self.limit = limit
        self.max_wait_s = max_wait_s
        self._handshaking = handshaking  # sessions doing ICE/DTLS now
        self._overloaded = overloaded  # no slot is free while the SFU is over its load
        self._clock = clock
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._reserved = 0  # admitted requests that have not created their session yet
        # the sessions' per identity/address counts of sessions connecting: a waiting
        # request counts there too (the 429 limits), or one client could queue without
        # bound
        self.connecting = connecting
        self._admitted_at: deque[float] = deque()
        self.admitted = 0
        self.queued = 0  # admitted after waiting
        self.refused = 0
        self.waiting_max = 0
        self.wait_max_s = 0.0
        self.closed = False

    def _free(self) -> int:
        if self._overloaded():
            return 0
        return self.limit - self._handshaking() - self._reserved

    def rate(self, now: float) -> float:
        """Admissions per second over the last RATE_WINDOW_S (0 if none)."""
        while self._admitted_at and self._admitted_at[0] < now - RATE_WINDOW_S:
            self._admitted_at.popleft()
        return len(self._admitted_at) / RATE_WINDOW_S

    def _grant(self, now: float) -> None:
        self._reserved += 1
        self.admitted += 1
        self._admitted_at.append(now)

    def pump(self) -> None:
        """Let waiting requests in while slots are free (a handshake ended, a request
        admitted made no session, the load fell: the worker calls this on each)."""
        now = self._clock()
        while self._waiters and not self.closed and self._free() > 0:
            fut = self._waiters.popleft()
            if not fut.done():
                self._grant(now)
                fut.set_result(None)

    def _refuse(self, now: float, why: str) -> SessionError:
        self.refused += 1
        rate = self.rate(now)
        wait = len(self._waiters) / rate if rate > 0 else self.max_wait_s
        return SessionError(
            503,
            f"{why}: {len(self._waiters)} sessions are waiting to connect; try again",
            retry_after=min(30, max(1, math.ceil(wait))),
        )

    def close(self) -> None:
        """The SFU is stopping: every waiting request is refused, none admitted."""
        self.closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(SessionError(503, "the SFU is shutting down", retry_after=2))

    @asynccontextmanager
    async def turn(
        self, keys: Iterable[str] = (), max_wait_s: float | None = None
    ) -> AsyncIterator[None]:
        """Wait for a handshake slot (at most `max_wait_s`, default the queue's); the
        caller creates its session inside (or fails to: the slot is free again either
        way on exit)."""
        now = self._clock()
        if self.closed:
            raise SessionError(503, "the SFU is shutting down", retry_after=2)
        if not self._waiters and self._free() > 0:
            self._grant(now)
        else:
            wait = self.max_wait_s if max_wait_s is None else min(max_wait_s, self.max_wait_s)
            await self._wait(list(keys), now, wait)
        try:
            yield
        finally:
            self._reserved -= 1
            self.pump()

    async def _wait(self, keys: list[str], now: float, max_wait_s: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.connecting.update(keys)
        self.waiting_max = max(self.waiting_max, len(self._waiters))
        try:
            # asyncio.wait leaves `fut` alone on timeout: a grant racing the deadline is
            # seen below, not lost with a reserved slot
            await asyncio.wait([fut], timeout=max_wait_s)
        except BaseException:
            self._leave(fut)  # the client went away while waiting
            raise
        finally:
            release(self.connecting, keys)
        if not fut.done():
            self._leave(fut)
            raise self._refuse(self._clock(), f"no slot within {max_wait_s:g} s")
        fut.result()  # raises when the queue was closed
        self.queued += 1
        self.wait_max_s = max(self.wait_max_s, self._clock() - now)

    def _leave(self, fut: asyncio.Future[None]) -> None:
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            # granted, but nobody will use the slot
            self._reserved -= 1
            self.pump()
        else:
            fut.cancel()
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    def stats(self) -> dict[str, object]:
        return {
            "handshaking_limit": self.limit,
            "waiting": len(self._waiters),
            "waiting_max": self.waiting_max,
            "admitted": self.admitted,
            "admitted_after_waiting": self.queued,
            "wait_max_ms": round(1000 * self.wait_max_s, 1),
            "refused": self.refused,
        }
