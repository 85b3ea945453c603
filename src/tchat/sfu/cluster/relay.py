"""Origin → edge relay: one room served by several SFU instances.

The instance holding a room's publisher is its *origin* (origin.py). Another instance
asked to serve a viewer of that room becomes an *edge* (edge.py): it subscribes once
(control API, authenticated) and then receives the origin's RTP over a plain UDP relay
socket, unchanged (no decode, no re-encode), one stream per layer its viewers use. The
edge feeds those packets into local `Track`s of a room without a publisher, so its
viewers are served by the same forwarder as on the origin.

`Relay` is the I/O of both roles: the relay socket, their once-a-second timer, and the
dispatch of datagrams (sfu/cluster/wire.py: type, subscription, kind, layer + body). Each
side accepts a subscription's datagrams only from the address agreed at setup. Both
sides send a datagram at least once a second; RELAY_TIMEOUT_S of silence ends the
subscription (an edge then ends the room for its viewers: the origin is gone). The
roles hang off the worker's session events; neither extends the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tchat.sfu.cluster.edge import Edge
from tchat.sfu.cluster.origin import Origin
from tchat.sfu.cluster.wire import END, KEEPALIVE, MEDIA, PREFIX, RESTART
from tchat.sfu.core import SfuCore
from tchat.sfu.ice import Addr
from tchat.sfu.worker import widen_socket_buffers

log = logging.getLogger("tchat.sfu.relay")


class Relay(asyncio.DatagramProtocol):
    def __init__(self, core: SfuCore, host: str = "127.0.0.1") -> None:
        self.core = core
        self.host = host
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.origin = Origin(core, self.send)
        self.edge = Edge(core, self.send)
        self._timer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        # every layer of every relayed room arrives here: the worker socket's buffers,
        # so an edge that stalls for a moment does not drop (and NACK) what queued
        widen_socket_buffers(transport)
        self._timer = asyncio.create_task(self._each_second())

    async def stop(self) -> None:
        self.origin.end_all()
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self.transport is not None:
            self.transport.close()

    async def _each_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.tick(self.core.now())
            except Exception:  # the relay's housekeeping must outlive one bad round
                log.exception("relay tick failed")

    def send(self, data: bytes, addr: Addr) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        try:
            self.received(data, addr)
        except Exception:  # a malformed datagram must never stop the relay
            self.core.drops["relay_error"] += 1
            log.debug("relay datagram from %s raised", addr, exc_info=True)

    def error_received(self, exc: Exception) -> None:
        self.core.drops["relay_socket_error"] += 1

    def received(self, data: bytes, addr: Addr) -> None:
        """One relay datagram: origin → edge kinds to our edge role, the rest to our origin
        role, each only from the address its subscription agreed."""
        if len(data) < PREFIX.size:
            self.core.drops["relay_short"] += 1
            return
        kind, sid, k, i = PREFIX.unpack_from(data)
        if kind in (MEDIA, KEEPALIVE, END, RESTART):
            edge = self.edge.by_sid(sid)
            if edge is None or edge.origin != addr:
                self.core.drops["relay_unknown_source"] += 1
                return
            self.edge.received(kind, edge, k, i, data)
        else:
            origin = self.origin.subs.get(sid)
            if origin is None or origin.addr != addr:
                self.core.drops["relay_unknown_source"] += 1
                return
            self.origin.received(kind, origin, k, i, data[PREFIX.size :])

    def tick(self, now: float) -> None:
        self.origin.tick(now)
        self.edge.tick(now)

    def stats(self) -> dict[str, object]:
        """The relay's part of an instance's /stats (what the supervisor and the load
        suite read), beside the worker's."""
        rooms = self.core.rooms
        return {
            "relay_port": self.port,
            "live_rooms": self.core.live_rooms(),
            "viewers": sum(len(r.viewers) for r in rooms.values()),
            "origin_rooms": sorted(n for n, r in rooms.items() if r.publisher is not None),
            **self.origin.stats(),
            **self.edge.stats(),
        }
