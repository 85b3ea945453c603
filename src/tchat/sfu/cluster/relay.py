"""Origin → edge relay: one room served by several SFU instances.

The instance holding a room's publisher is its *origin*. Another instance asked to
serve a viewer of that room becomes an *edge*: it subscribes once (control API,
authenticated) and then receives the origin's RTP over a plain UDP relay socket,
unchanged (no decode, no re-encode), one stream per layer its viewers use. The edge
feeds those packets into local `Track`s of a room without a publisher, so its
viewers are served by the same forwarder as on the origin.

Relay datagrams are sfu/relay_wire.py's (type, subscription, kind, layer + body). Each
side accepts a subscription's datagrams only from the address agreed at setup. Both
sides send a datagram at least once a second; RELAY_TIMEOUT_S of silence ends the
subscription (an edge then ends the room for its viewers: the origin is gone).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tchat.sfu import sdp
from tchat.sfu.forwarder import HIGH, Track
from tchat.sfu.ice import Addr
from tchat.sfu.relay_wire import (
    BYE,
    DEMAND,
    END,
    KEEPALIVE,
    MEDIA,
    NACK,
    NACK_WINDOW,
    PLI,
    PREFIX,
    RELAY_TIMEOUT_S,
    RTP_HEADER,
    media_from_json,
    media_to_json,
    pick_layers,
)
from tchat.sfu.rtp import HEADER
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import (
    Peer,
    Room,
    SessionError,
    SfuWorker,
    track_for,
    widen_socket_buffers,
)

__all__ = [
    "BYE",
    "DEMAND",
    "MEDIA",
    "NACK",
    "PREFIX",
    "ClusterWorker",
    "EdgeSub",
    "OriginSub",
    "media_from_json",
    "media_to_json",
    "pick_layers",
]
log = logging.getLogger("tchat.sfu.relay")


@dataclass(eq=False)
class OriginSub:
    """On the origin: one edge's subscription to one room."""

    sid: int
    room: str
    addr: Addr
    tracks: list[Track]
    heard_at: float
    caps: list[int] = field(default_factory=list)  # per kind: layer caps the edge wants
    masks: list[int] = field(default_factory=list)  # per kind: layers being relayed
    sinks: list[Callable[[int, bytes], None]] = field(default_factory=list)
    packets: int = 0
    octets: int = 0


@dataclass(eq=False)
class EdgeSub:
    """On the edge: this instance's pull of one room from its origin."""

    sid: int
    room: Room
    origin: Addr
    origin_id: str
    media: list[sdp.Media]
    tracks: list[Track]
    heard_at: float
    packets: int = 0
    nacks: int = 0


class _RelayProtocol(asyncio.DatagramProtocol):
    def __init__(self, worker: ClusterWorker) -> None:
        self.worker = worker

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        try:
            self.worker.relay_received(data, addr)
        except Exception:  # a malformed datagram must never stop the relay
            self.worker.drops["relay_error"] += 1
            log.debug("relay datagram from %s raised", addr, exc_info=True)

    def error_received(self, exc: Exception) -> None:
        self.worker.drops["relay_socket_error"] += 1


class ClusterWorker(SfuWorker):
    """An `SfuWorker` that can be a room's origin for edges, or an edge of another origin."""

    def __init__(
        self,
        settings: SfuSettings,
        relay_host: str = "127.0.0.1",
        clock: Callable[[], float] | None = None,
        cpu_clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(settings, clock=clock, cpu_clock=cpu_clock)
        self.relay_host = relay_host
        self.relay_port = 0
        self.relay_transport: asyncio.DatagramTransport | None = None
        self.origin_subs: dict[int, OriginSub] = {}
        self.edge_subs: dict[str, EdgeSub] = {}  # by room name
        self._edge_by_sid: dict[int, EdgeSub] = {}
        self.relay_out = 0  # MEDIA datagrams sent to edges
        self.relay_in = 0  # MEDIA datagrams received from origins
        self._relay_second = 0.0

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _RelayProtocol(self), local_addr=(self.relay_host, 0)
        )
        self.relay_transport = transport
        self.relay_port = transport.get_extra_info("sockname")[1]
        # every layer of every relayed room arrives here: the worker socket's buffers,
        # so an edge that stalls for a moment does not drop (and NACK) what queued
        widen_socket_buffers(transport)

    async def stop(self) -> None:
        for sub in list(self.origin_subs.values()):
            self._relay_send(PREFIX.pack(END, sub.sid, 0, 0), sub.addr)
        await super().stop()
        if self.relay_transport is not None:
            self.relay_transport.close()

    def _relay_send(self, data: bytes, addr: Addr) -> None:
        if self.relay_transport is not None:
            self.relay_transport.sendto(data, addr)

    # -- origin side ---------------------------------------------------------------
    def has_publisher(self, room_name: str) -> bool:
        room = self.rooms.get(room_name)
        return room is not None and room.publisher is not None and not room.publisher.closed

    def subscribe(self, room_name: str, sid: int, addr: Addr) -> list[dict[str, Any]]:
        """An edge starts pulling `room_name`; returns the publisher's media."""
        room = self.rooms.get(room_name)
        if room is None or room.publisher is None or room.publisher.closed:
            raise SessionError(404, f"room {room_name!r} has no publisher here")
        old = self.origin_subs.get(sid)
        if old is not None:
            self._drop_origin_sub(old)
        tracks = [room.tracks[m.kind] for m in room.publisher.media if m.kind in room.tracks]
        sub = OriginSub(sid, room_name, addr, tracks, self.now())
        sub.caps = [0] * len(tracks)
        sub.masks = [0] * len(tracks)
        for k, track in enumerate(tracks):
            sink = self._sink(sub, k)
            sub.sinks.append(sink)
            track.relays.append(sink)
        self.origin_subs[sid] = sub
        log.info("relay origin room=%s edge=%s:%d sid=%d", room_name, addr[0], addr[1], sid)
        return media_to_json(room.publisher.media)

    def _sink(self, sub: OriginSub, k: int) -> Callable[[int, bytes], None]:
        send = self._relay_send
        masks = sub.masks
        addr = sub.addr
        heads = [PREFIX.pack(MEDIA, sub.sid, k, i) for i in range(HIGH + 1)]

        def sink(index: int, data: bytes) -> None:
            if masks[k] >> index & 1:
                send(heads[index] + data, addr)
                sub.packets += 1
                sub.octets += len(data)
                self.relay_out += 1

        return sink

    def _drop_origin_sub(self, sub: OriginSub) -> None:
        self.origin_subs.pop(sub.sid, None)
        for track, sink in zip(sub.tracks, sub.sinks, strict=True):
            if sink in track.relays:
                track.relays.remove(sink)
        sub.sinks = []

    def _apply_demand(self, sub: OriginSub, now: float) -> None:
        for k, track in enumerate(sub.tracks):
            mask = pick_layers(sub.caps[k], track.available(now))
            added = mask & ~sub.masks[k]
            sub.masks[k] = mask
            for i in range(HIGH + 1):
                if added >> i & 1:
                    track.request_layer_keyframe(i, now)  # the edge's viewers start on one

    def _origin_datagram(self, kind: int, sub: OriginSub, k: int, i: int, body: bytes) -> None:
        now = self.now()
        sub.heard_at = now
        if kind == DEMAND:
            caps = list(body[: len(sub.tracks)]) + [0] * max(0, len(sub.tracks) - len(body))
            if caps != sub.caps:
                sub.caps = caps
                self._apply_demand(sub, now)
        elif kind == PLI and k < len(sub.tracks):
            sub.tracks[k].request_layer_keyframe(i, now)
        elif kind == NACK and k < len(sub.tracks) and i <= HIGH:
            layer = sub.tracks[k].layers[i] if i < len(sub.tracks[k].layers) else None
            if layer is None:
                return
            head = PREFIX.pack(MEDIA, sub.sid, k, i)
            for (seq,) in struct.iter_unpack("!H", body[: 2 * NACK_WINDOW]):
                entry = layer.cache.get(seq)
                if entry is not None:
                    _, ts, marker, payload = entry
                    pkt = RTP_HEADER(0x80, marker | 96, seq, ts, layer.ssrc) + payload
                    self._relay_send(head + pkt, sub.addr)
        elif kind == BYE:
            self._drop_origin_sub(sub)
            log.info("relay origin room=%s sid=%d: edge left", sub.room, sub.sid)

    # -- edge side -------------------------------------------------------------------
    def open_edge(
        self, room_name: str, sid: int, origin: Addr, origin_id: str, media: list[sdp.Media]
    ) -> EdgeSub:
        """Serve `room_name` from a relay of `origin` (subscription already accepted)."""
        room = Room(room_name)
        sub = EdgeSub(sid, room, origin, origin_id, media, [], self.now())
        for k, m in enumerate(media):
            track = track_for(m, self._edge_pli(sub, k))
            sub.tracks.append(track)
            room.tracks[m.kind] = track
        self.rooms[room_name] = room
        self.edge_subs[room_name] = sub
        self._edge_by_sid[sid] = sub
        log.info("relay edge room=%s origin=%s sid=%d", room_name, origin_id, sid)
        return sub

    def _edge_pli(self, sub: EdgeSub, k: int) -> Callable[[int], None]:
        def send_pli(ssrc: int) -> None:
            layer = sub.tracks[k].by_ssrc.get(ssrc)
            if layer is not None:
                self._relay_send(PREFIX.pack(PLI, sub.sid, k, layer.index), sub.origin)

        return send_pli

    def new_sid(self) -> int:
        while True:
            sid = secrets.randbits(32)
            if sid and sid not in self._edge_by_sid:
                return sid

    def send_demand(self, sub: EdgeSub) -> None:
        caps = 0
        for viewer in sub.room.viewers.values():
            top = min(max(viewer.max_layer, 0), HIGH)
            # an adaptive viewer may be moved to any layer up to its cap, and its policy
            # needs each one's measured rate: it demands them all
            caps |= (1 << (top + 1)) - 1 if self.allocator.is_adaptive(viewer) else 1 << top
        # audio has one layer: any viewer wants it, whatever its video cap
        body = bytes(caps for _ in sub.tracks)
        self._relay_send(PREFIX.pack(DEMAND, sub.sid, 0, 0) + body, sub.origin)

    def end_edge(self, room_name: str, reason: str) -> None:
        sub = self.edge_subs.get(room_name)
        if sub is None:
            return
        self._forget_edge(sub)
        self._relay_send(PREFIX.pack(BYE, sub.sid, 0, 0), sub.origin)
        for viewer in list(sub.room.viewers.values()):
            self.close_peer(viewer, reason)
        if self.rooms.get(room_name) is sub.room:
            self.rooms.pop(room_name, None)

    def _forget_edge(self, sub: EdgeSub) -> None:
        if self.edge_subs.get(sub.room.name) is sub:
            del self.edge_subs[sub.room.name]
        self._edge_by_sid.pop(sub.sid, None)

    def _edge_datagram(self, kind: int, sub: EdgeSub, k: int, i: int, data: bytes) -> None:
        now = self.now()
        sub.heard_at = now
        if kind == MEDIA and k < len(sub.tracks):
            rtp = data[PREFIX.size :]
            sub.packets += 1
            self.relay_in += 1
            track = sub.tracks[k]
            layer = track.by_ssrc.get(HEADER.unpack_from(rtp)[4])
            if layer is not None:
                seq = (rtp[2] << 8) | rtp[3]
                gap = (seq - layer.max_seq) & 0xFFFF
                if 1 < gap <= NACK_WINDOW:  # lost on the relay: ask the origin's cache
                    lost = [(layer.max_seq + j) & 0xFFFF for j in range(1, gap)]
                    head = PREFIX.pack(NACK, sub.sid, k, layer.index)
                    self._relay_send(head + struct.pack(f"!{len(lost)}H", *lost), sub.origin)
                    sub.nacks += len(lost)
            try:
                self.delivered += track.forward(rtp, now, i)
            except ValueError:
                self.drops["relay_rtp_malformed"] += 1
        elif kind == END:
            self.end_edge(sub.room.name, "origin ended the room")

    # -- both ------------------------------------------------------------------------
    def relay_received(self, data: bytes, addr: Addr) -> None:
        if len(data) < PREFIX.size:
            self.drops["relay_short"] += 1
            return
        kind, sid, k, i = PREFIX.unpack_from(data)
        if kind in (MEDIA, KEEPALIVE, END):
            edge = self._edge_by_sid.get(sid)
            if edge is None or edge.origin != addr:
                self.drops["relay_unknown_source"] += 1
                return
            self._edge_datagram(kind, edge, k, i, data)
        else:
            origin = self.origin_subs.get(sid)
            if origin is None or origin.addr != addr:
                self.drops["relay_unknown_source"] += 1
                return
            self._origin_datagram(kind, origin, k, i, data[PREFIX.size :])

    def add_publisher(
        self, room_name: str, offer: str, owner: str = "", source: str = ""
    ) -> tuple[Peer, str]:
        if room_name in self.edge_subs:  # the room moved here: stop relaying the old one
            self.end_edge(room_name, "publisher moved")
        return super().add_publisher(room_name, offer, owner, source)

    def add_viewer(
        self,
        room_name: str,
        offer: str,
        max_layer: int = HIGH,
        owner: str = "",
        source: str = "",
    ) -> tuple[Peer, str]:
        sub = self.edge_subs.get(room_name)
        if sub is None:
            return super().add_viewer(room_name, offer, max_layer, owner, source)
        self._check_capacity("viewer", owner, source)
        peer, answer = self._join_viewer(sub.room, sub.media, offer, max_layer, owner, source)
        self.send_demand(sub)
        return peer, answer

    def set_max_layer(self, peer: Peer, max_layer: int) -> None:
        super().set_max_layer(peer, max_layer)
        sub = self.edge_subs.get(peer.room.name)
        if sub is not None and sub.room is peer.room:
            self.send_demand(sub)

    def close_peer(self, peer: Peer, reason: str) -> None:
        if peer.closed:
            return
        room = peer.room
        if peer.role == "publisher" and room.publisher is peer:
            for osub in [s for s in self.origin_subs.values() if s.room == room.name]:
                self._drop_origin_sub(osub)
                for _ in range(3):  # UDP: say it more than once; the timeout is the backstop
                    self._relay_send(PREFIX.pack(END, osub.sid, 0, 0), osub.addr)
        super().close_peer(peer, reason)
        esub = self.edge_subs.get(room.name)
        if esub is not None and esub.room is room and not room.viewers:
            # the last viewer left: stop pulling
            self._forget_edge(esub)
            self._relay_send(PREFIX.pack(BYE, esub.sid, 0, 0), esub.origin)
            if self.rooms.get(room.name) is room:
                self.rooms.pop(room.name, None)

    def tick(self, now: float) -> None:
        super().tick(now)
        if now - self._relay_second < 1.0:
            return
        self._relay_second = now
        for osub in list(self.origin_subs.values()):
            if now - osub.heard_at > RELAY_TIMEOUT_S:
                log.info("relay origin room=%s sid=%d: edge silent, dropped", osub.room, osub.sid)
                self._drop_origin_sub(osub)
                continue
            self._apply_demand(osub, now)  # layers come and go
            self._relay_send(PREFIX.pack(KEEPALIVE, osub.sid, 0, 0), osub.addr)
        for esub in list(self.edge_subs.values()):
            if now - esub.heard_at > RELAY_TIMEOUT_S:
                self.end_edge(esub.room.name, "origin lost")
            else:
                self.send_demand(esub)

    def stats(self, viewers: bool = False) -> dict[str, object]:
        out = super().stats(viewers)
        if viewers:  # "viewers" is the count here, as the supervisor reads it
            out["adaptive"] = out.pop("viewers")
        out.update(
            {
                "relay_port": self.relay_port,
                "live_rooms": self.live_rooms(),
                "viewers": sum(len(r.viewers) for r in self.rooms.values()),
                "origin_rooms": sorted(n for n, r in self.rooms.items() if r.publisher is not None),
                "edge_rooms": sorted(self.edge_subs),
                "relay_packets_out": self.relay_out,
                "relay_packets_in": self.relay_in,
                "relay_edges": [
                    {
                        "room": s.room,
                        "sid": s.sid,
                        "packets": s.packets,
                        "octets": s.octets,
                        "layers": s.masks,
                    }
                    for s in self.origin_subs.values()
                ],
                "relay_nacks_sent": sum(s.nacks for s in self.edge_subs.values()),
            }
        )
        return out
