"""The SFU's asyncio shell: one UDP socket (and the ICE-TCP port, sfu/tcp.py), the timer
loop, the CPU accounting.

Everything else is the sans-I/O `SfuCore` (sfu/core.py), which this class extends only
with I/O: `datagram_received` hands each datagram to `receive_datagram` with the loop's
time, the timer task calls `handle_timer` when `get_timer` says, and what the core sends
goes to the socket. The time spent in both handlers is the `busy` the admission gate
measures the SFU's load by (in `tchat serve`'s process the loop also serves HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections.abc import Callable

from tchat.aio import cancel_and_wait
from tchat.sfu.admission import JoinQueue, SessionError
from tchat.sfu.core import PACE_S, TICK_S, SfuCore
from tchat.sfu.ice import Addr
from tchat.sfu.peer import Peer, Role, Room, connecting_keys, track_for
from tchat.sfu.settings import SfuSettings
from tchat.sfu.tcp import TcpLink

__all__ = [
    "PACE_S",
    "TICK_S",
    "Peer",
    "Role",
    "Room",
    "SessionError",
    "SfuWorker",
    "track_for",
    "widen_socket_buffers",
]
log = logging.getLogger("tchat.sfu")
SOCKET_BUFFER_BYTES = 8 * 1024 * 1024
HANDSHAKE_SLOT_S = 3.0  # loopback handshakes in a 500-a-second storm took 0.1–1.5 s


def widen_socket_buffers(transport: asyncio.BaseTransport) -> None:
    """SOCKET_BUFFER_BYTES each way (the kernel caps it at net.core.[rw]mem_max)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
        except OSError:
            pass


class SfuWorker(SfuCore, asyncio.DatagramProtocol):
    def __init__(
        self,
        settings: SfuSettings,
        clock: Callable[[], float] | None = None,
        cpu_clock: Callable[[], float] | None = None,
        busy_clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, self._sendto, clock, cpu_clock, wall_clock)
        self._busy_clock = busy_clock
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.Task[None] | None = None
        self._tcp: asyncio.Server | None = None  # ICE-TCP (sfu/tcp.py), when configured
        self._links: set[TcpLink] = set()
        self.joins = JoinQueue(
            settings.max_handshaking,
            settings.join_wait_s,
            self._slots_taken,
            self.connecting,
            lambda: self.now(),
            lambda: self.load > self.settings.max_load,
        )

    def _slots_taken(self) -> int:
        """Sessions holding a handshake slot: connecting for less than HANDSHAKE_SLOT_S.
        One that takes longer goes on connecting but frees its slot, so a few clients
        that never finish cannot hold the queue shut for SFU_CONNECT_TIMEOUT."""
        since = self.now() - HANDSHAKE_SLOT_S
        return sum(1 for peer in self.handshaking if peer.created_at > since)

    async def admit_viewer(
        self,
        room: str,
        offer: str,
        max_layer: int,
        owner: str = "",
        source: str = "",
        max_wait_s: float | None = None,
    ) -> tuple[Peer, str]:
        """`add_viewer` once a handshake slot is free (sfu/admission.py): refusals that
        waiting would not change come at once, the rest wait in arrival order (at most
        `max_wait_s`, default SFU_JOIN_WAIT)."""
        self._check_capacity("viewer", owner, source, load=False)
        live = self.rooms.get(room)
        if live is None or live.media() is None:
            return self.add_viewer(room, offer, max_layer, owner, source)  # 400/404 at once
        async with self.joins.turn(connecting_keys(owner, source), max_wait_s):
            return self.add_viewer(room, offer, max_layer, owner, source, load=False)

    def _handshake_over(self, peer: Peer) -> None:
        super()._handshake_over(peer)
        self.joins.pump()  # a slot is free: the next waiting viewer goes on

    def stats(self, viewers: bool = False) -> dict[str, object]:
        out = super().stats(viewers)
        out["admission"] = self.joins.stats()
        return out

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = loop.time
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.settings.udp_host, self.settings.udp_port)
        )
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        self.udp_fd = transport.get_extra_info("socket").fileno()
        # a keyframe fanned out to thousands of viewers is one burst: let the kernel
        # queue it rather than drop
        widen_socket_buffers(transport)
        self._timer = asyncio.create_task(self._run_timers(), name="sfu-timers")
        if self.settings.tcp_port:
            # each connection is a file descriptor: leave half of them to everything else
            max_links = min(
                2 * self.settings.max_peers, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2
            )
            self._tcp = await loop.create_server(
                lambda: TcpLink(self, self._links, max_links),
                self.settings.udp_host,
                self.settings.tcp_port,
            )
            self.tcp_port = self._tcp.sockets[0].getsockname()[1]
        log.info(
            "sfu listening udp=%s:%d tcp=%s fan-out=%s",
            self.settings.udp_host,
            self.port,
            self.tcp_port or "off",
            self.fastpath.describe(),
        )

    async def stop(self) -> None:
        self.joins.close()
        for peer in list(self.peers.values()):
            self.close_peer(peer, "shutdown")
        await cancel_and_wait(self._timer)
        if self.transport:
            self.transport.close()
        if self._tcp is not None:
            self._tcp.close()
            for link in list(self._links):
                link.close()
            await self._tcp.wait_closed()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        started = self._busy_clock()
        try:
            self.receive_datagram(data, addr, self.now())
        finally:
            self.busy += self._busy_clock() - started

    def error_received(self, exc: Exception) -> None:
        self.drops["socket_error"] += 1  # e.g. ICMP port unreachable from a gone viewer

    def _sendto(self, data: bytes, addr: Addr) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    async def _run_timers(self) -> None:
        now = self.now()
        self.start_timer(now)
        while True:
            # the interval counts from the end of the handler, as the core's `now` did
            await asyncio.sleep(self.get_timer() - now)
            started = self._busy_clock()
            try:
                now = self.now()
                self.handle_timer(now)
            except Exception:
                log.exception("sfu timer failed")
            try:
                self.joins.pump()  # the load fell, or a slow handshake's slot expired
            except Exception:
                log.exception("sfu admission failed")
            self.busy += self._busy_clock() - started
