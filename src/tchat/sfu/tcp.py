"""ICE over TCP (RFC 6544): one passive TCP port beside the UDP one, for clients whose
network blocks UDP. Each connection carries STUN, DTLS and SRTP framed as RFC 4571
says (a 16-bit length before each packet); the core sees them as datagrams from the
connection's address and answers through `SfuCore.streams`, so ICE, DTLS and media
work as over UDP. Media over TCP suffers head-of-line blocking: it is the fallback,
offered with a lower priority than the UDP candidate.

`Framer` is the framing without I/O; `TcpLink` is the asyncio protocol of one
connection (the shell's, like `SfuWorker` for UDP). A connection no session claims
(its address never passed an authenticated check) within the connect timeout is
closed, the number of connections is capped, and what waits in a slow client's send
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
MAX_BACKLOG = 512 * 1024  # bytes queued for one client before packets are dropped


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


class TcpLink(asyncio.Protocol):
    """One client connection to the SFU's TCP port."""

    def __init__(self, core: SfuWorker, links: set[TcpLink], max_links: int) -> None:
        self.core = core
        self.links = links
        self.max_links = max_links
        self.framer = Framer()
        self.transport: asyncio.Transport | None = None
        self.addr: Addr | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        if len(self.links) >= self.max_links or peer is None:
            self.core.drops["tcp_refused"] += 1
            self.transport.close()
            return
        self.addr = (str(peer[0]), int(peer[1]))
        self.links.add(self)
        self.core.streams[self.addr] = self.write
        asyncio.get_running_loop().call_later(
            self.core.settings.connect_timeout_s, self._claimed_or_close
        )

    def _claimed_or_close(self) -> None:
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
        self.links.discard(self)
        if self.addr is not None:
            self.core.stream_closed(self.addr)
