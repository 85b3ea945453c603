"""ICE over TCP (RFC 6544): one passive TCP port beside the UDP one, for clients whose
network blocks UDP. Each connection carries STUN, DTLS and SRTP framed as RFC 4571
says (a 16-bit length before each packet); the core sees them as datagrams from the
connection's (tagged) address and answers through `SfuCore.streams`, so ICE, DTLS and
media work as over UDP. Media over TCP suffers head-of-line blocking: it is the fallback,
offered with a lower priority than the UDP candidate.

`Framer` is the framing without I/O; `TcpLink` is the asyncio protocol of one
connection (the shell's, like `SfuWorker` for UDP). A connection no session claims
(its address never passed an authenticated check) within the connect timeout is
closed, and so is one whose session ended or forgot it; connections are capped in all
(2 × SFU_MAX_PEERS, and half the process's file descriptors) and unclaimed ones per
client address (SFU_MAX_CONNECTING_PER_ADDRESS); what waits in a slow client's send
buffer is bounded: past `MAX_BACKLOG` bytes packets are dropped, not queued.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from tchat.sfu.ice import Addr
    from tchat.sfu.worker import SfuWorker

log = logging.getLogger("tchat.sfu")
MAX_FRAME = 0xFFFF
MAX_BACKLOG = 128 * 1024  # bytes queued for one client before packets are dropped
TCP_TAG = "/tcp"  # on the ip of a TCP connection's address (see tcp_addr)


class FramingError(ValueError):
    """Bytes on the TCP port that are not RFC 4571 frames of a size we take."""


def frame(packet: bytes) -> bytes:
    return len(packet).to_bytes(2, "big") + packet


class Framer:
    """RFC 4571 framing of one connection's byte stream: `feed` bytes, get packets."""

    def __init__(self, max_packet: int = 2048) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 2:
            size = (self._buf[0] << 8) | self._buf[1]
            if size == 0 or size > self.max_packet:
                raise FramingError(f"a {size}-byte frame (at most {self.max_packet})")
            if len(self._buf) < 2 + size:
                break
            out.append(bytes(self._buf[2 : 2 + size]))
            del self._buf[: 2 + size]
        return out


def tcp_addr(ip: str, port: int) -> Addr:
    """The core's name for a TCP connection: the peer's address tagged, so it can never
    be taken for the same (ip, port) over UDP (two users behind one NAT may have both)."""
    return (ip + TCP_TAG, port)


def wire_addr(addr: Addr) -> Addr:
    """The address itself (for XOR-MAPPED-ADDRESS), TCP tag removed."""
    return (addr[0].removesuffix(TCP_TAG), addr[1])


def is_tcp(addr: Addr) -> bool:
    return addr[0].endswith(TCP_TAG)


class TcpLink(asyncio.Protocol):
    """One client connection to the SFU's TCP port. Registered in `SfuCore.streams`
    while open; the core closes it when the session that claimed it ends or forgets
    its address (sessions.py), and it closes itself if no session claims it in time."""

    def __init__(self, core: SfuWorker, links: set[TcpLink], max_links: int) -> None:
        self.core = core
        self.links = links
        self.max_links = max_links
        self.framer = Framer()
        self.transport: asyncio.Transport | None = None
        self.addr: Addr | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        if peer is None or not self._admit(str(peer[0])):
            self.core.drops["tcp_refused"] += 1
            self.transport.close()
            return
        self.addr = tcp_addr(str(peer[0]), int(peer[1]))
        self.links.add(self)
        self.core.streams[self.addr] = self
        self._timer = asyncio.get_running_loop().call_later(
            self.core.settings.connect_timeout_s, self._claimed_or_close
        )

    def _admit(self, ip: str) -> bool:
        """Under the cap of connections, and of unclaimed ones from this address."""
        if len(self.links) >= self.max_links:
            return False
        mine = sum(
            1
            for link in self.links
            if link.addr is not None
            and wire_addr(link.addr)[0] == ip
            and link.addr not in self.core.by_addr
        )
        return mine < self.core.settings.max_connecting_per_address

    def _claimed_or_close(self) -> None:
        self._timer = None
        if self.addr is not None and self.addr not in self.core.by_addr:
            self.core.drops["tcp_unclaimed"] += 1
            self.close()

    def data_received(self, data: bytes) -> None:
        try:
            packets = self.framer.feed(data)
        except FramingError:
            self.core.drops["tcp_framing"] += 1
            self.close()
            return
        assert self.addr is not None
        for packet in packets:
            self.core.datagram_received(packet, self.addr)

    def write(self, packet: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_BACKLOG:
            self.core.drops["tcp_backlog"] += 1
            return
        transport.write(frame(packet))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.links.discard(self)
        if self.addr is not None:
            self.core.stream_closed(self.addr)
