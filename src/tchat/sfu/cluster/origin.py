"""The origin side of the relay: this instance holds a room's publisher and sends its
RTP to each edge that subscribed, the layers each edge's viewers demand. No I/O: the
relay (relay.py) gives it datagrams, a send function and the time."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tchat.sfu.admission import SessionError
from tchat.sfu.cluster.wire import (
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
    RESTART,
    RTP_HEADER,
    media_to_json,
    pick_layers,
)
from tchat.sfu.core import SfuCore
from tchat.sfu.forwarder import HIGH, Track
from tchat.sfu.ice import Addr
from tchat.sfu.peer import Peer, SendTo
from tchat.sfu.sessions import PeerEvent

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


class Origin:
    def __init__(self, core: SfuCore, send: SendTo) -> None:
        self.core = core
        self._send = send
        self.subs: dict[int, OriginSub] = {}
        self.relay_out = 0  # MEDIA datagrams sent to edges
        self.generations: dict[str, int] = {}  # per room: its source restarts (RESTART)
        core.peer_listeners.append(self._peer_event)

    def has_publisher(self, room_name: str) -> bool:
        room = self.core.rooms.get(room_name)
        return room is not None and room.publisher is not None and not room.publisher.closed

    def waiting(self, room_name: str) -> bool:
        """The room's publisher was lost and its grace runs here (sessions.py)."""
        room = self.core.rooms.get(room_name)
        return room is not None and room.lost is not None

    def subscribe(self, room_name: str, sid: int, addr: Addr) -> list[dict[str, Any]]:
        """An edge starts pulling `room_name`; returns the publisher's media."""
        room = self.core.rooms.get(room_name)
        if room is None or room.publisher is None or room.publisher.closed:
            raise SessionError(404, f"room {room_name!r} has no publisher here")
        old = self.subs.get(sid)
        if old is not None:
            self.drop(old)
        tracks = [room.tracks[m.kind] for m in room.publisher.media if m.kind in room.tracks]
        sub = OriginSub(sid, room_name, addr, tracks, self.core.now())
        sub.caps = [0] * len(tracks)
        sub.masks = [0] * len(tracks)
        for k, track in enumerate(tracks):
            sink = self._sink(sub, k)
            sub.sinks.append(sink)
            track.relays.append(sink)
        self.subs[sid] = sub
        log.info("relay origin room=%s edge=%s:%d sid=%d", room_name, addr[0], addr[1], sid)
        return media_to_json(room.publisher.media)

    def _sink(self, sub: OriginSub, k: int) -> Callable[[int, bytes], None]:
        send = self._send
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

    def drop(self, sub: OriginSub) -> None:
        self.subs.pop(sub.sid, None)
        for track, sink in zip(sub.tracks, sub.sinks, strict=True):
            if sink in track.relays:
                track.relays.remove(sink)
        sub.sinks = []

    def end_all(self) -> None:
        for sub in list(self.subs.values()):
            self._send(PREFIX.pack(END, sub.sid, 0, 0), sub.addr)

    def _apply_demand(self, sub: OriginSub, now: float) -> None:
        for k, track in enumerate(sub.tracks):
            live = track.available(now)
            if not live:
                continue  # nothing flows: keep what to relay when it does (a resume)
            mask = pick_layers(sub.caps[k], live)
            added = mask & ~sub.masks[k]
            sub.masks[k] = mask
            for i in range(HIGH + 1):
                if added >> i & 1:
                    track.request_layer_keyframe(i, now)  # the edge's viewers start on one

    def received(self, kind: int, sub: OriginSub, k: int, i: int, body: bytes) -> None:
        now = self.core.now()
        sub.heard_at = now
        if kind == DEMAND:
            caps = list(body[: len(sub.tracks)]) + [0] * max(0, len(sub.tracks) - len(body))
            if caps != sub.caps:
                sub.caps = caps
                self._apply_demand(sub, now)
        elif kind == PLI and k < len(sub.tracks):
            sub.tracks[k].request_layer_keyframe(i, now)
        elif kind == NACK and k < len(sub.tracks) and i <= HIGH:
            self._answer_nack(sub, k, i, body)
        elif kind == BYE:
            self.drop(sub)
            log.info("relay origin room=%s sid=%d: edge left", sub.room, sub.sid)

    def _answer_nack(self, sub: OriginSub, k: int, i: int, body: bytes) -> None:
        layer = sub.tracks[k].layers[i] if i < len(sub.tracks[k].layers) else None
        if layer is None:
            return
        head = PREFIX.pack(MEDIA, sub.sid, k, i)
        for (seq,) in struct.iter_unpack("!H", body[: 2 * NACK_WINDOW]):
            entry = layer.cache.get(seq)
            if entry is not None:
                _, ts, marker, payload = entry
                pkt = RTP_HEADER(0x80, marker | 96, seq, ts, layer.ssrc) + payload
                self._send(head + pkt, sub.addr)

    def _peer_event(self, event: PeerEvent, peer: Peer) -> None:
        if event == "resumed":
            self._restart(peer.room.name)
        if event != "closed" or peer.role != "publisher" or peer.room.lost is peer:
            return  # (a lost publisher's room keeps its edges until its grace ends)
        for sub in [s for s in self.subs.values() if s.room == peer.room.name]:
            self.drop(sub)
            for _ in range(3):  # UDP: say it more than once; the timeout is the backstop
                self._send(PREFIX.pack(END, sub.sid, 0, 0), sub.addr)

    def _restart(self, room_name: str) -> None:
        """Tell the room's edges its source started over (a resumed publisher)."""
        generation = self.generations[room_name] = (self.generations.get(room_name, 0) + 1) % 256
        for sub in [s for s in self.subs.values() if s.room == room_name]:
            # relay the new source's layers from its first packet (as if every layer were
            # live); the next demand pass keeps only those that are
            for k, track in enumerate(sub.tracks):
                sub.masks[k] = pick_layers(sub.caps[k], list(range(len(track.layers))))
            for _ in range(3):  # UDP: more than once (the generation makes it idempotent)
                self._send(PREFIX.pack(RESTART, sub.sid, generation, 0), sub.addr)

    def tick(self, now: float) -> None:
        """Once a second: silent edges dropped, layers re-picked, keepalives."""
        for sub in list(self.subs.values()):
            if now - sub.heard_at > RELAY_TIMEOUT_S:
                log.info("relay origin room=%s sid=%d: edge silent, dropped", sub.room, sub.sid)
                self.drop(sub)
                continue
            self._apply_demand(sub, now)  # layers come and go
            self._send(PREFIX.pack(KEEPALIVE, sub.sid, 0, 0), sub.addr)

    def stats(self) -> dict[str, object]:
        return {
            "relay_packets_out": self.relay_out,
            "relay_edges": [
                {
                    "room": s.room,
                    "sid": s.sid,
                    "packets": s.packets,
                    "octets": s.octets,
                    "layers": s.masks,
                }
                for s in self.subs.values()
            ],
        }
