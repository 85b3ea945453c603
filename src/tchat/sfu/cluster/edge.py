"""The edge side of the relay: this instance serves viewers of a room whose publisher is
on another instance (the origin). It subscribes once, feeds the relayed RTP into tracks
of a room without a publisher (`Room.source_media`, `SfuCore.feed`), tells the origin
which layers its viewers need, NACKs relay gaps and forwards its viewers' keyframe
requests. No I/O: the relay (relay.py) gives it datagrams, a send function and the time."""

from __future__ import annotations

import logging
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

from tchat.sfu import sdp
from tchat.sfu.cluster.wire import (
    BYE,
    DEMAND,
    END,
    MEDIA,
    NACK,
    NACK_WINDOW,
    PLI,
    PREFIX,
    RELAY_TIMEOUT_S,
    RESTART,
)
from tchat.sfu.core import SfuCore
from tchat.sfu.forwarder import HIGH, Track
from tchat.sfu.ice import Addr
from tchat.sfu.peer import Peer, Room, SendTo, track_for
from tchat.sfu.rtp import HEADER
from tchat.sfu.sessions import PeerEvent

log = logging.getLogger("tchat.sfu.relay")


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
    generation: int = 0  # of the origin's source (RESTART)


class Edge:
    def __init__(self, core: SfuCore, send: SendTo) -> None:
        self.core = core
        self._send = send
        self.subs: dict[str, EdgeSub] = {}  # by room name
        self._by_sid: dict[int, EdgeSub] = {}
        self.relay_in = 0  # MEDIA datagrams received from origins
        core.peer_listeners.append(self._peer_event)

    def by_sid(self, sid: int) -> EdgeSub | None:
        return self._by_sid.get(sid)

    def new_sid(self) -> int:
        while True:
            sid = secrets.randbits(32)
            if sid and sid not in self._by_sid:
                return sid

    def open(
        self, room_name: str, sid: int, origin: Addr, origin_id: str, media: list[sdp.Media]
    ) -> EdgeSub:
        """Serve `room_name` from a relay of `origin` (subscription already accepted)."""
        room = Room(room_name, source_media=media)
        sub = EdgeSub(sid, room, origin, origin_id, media, [], self.core.now())
        for k, m in enumerate(media):
            track = track_for(m, self._pli(sub, k))
            sub.tracks.append(track)
            room.tracks[m.kind] = track
        self.core.rooms[room_name] = room
        self.subs[room_name] = sub
        self._by_sid[sid] = sub
        log.info("relay edge room=%s origin=%s sid=%d", room_name, origin_id, sid)
        return sub

    def _pli(self, sub: EdgeSub, k: int) -> Callable[[int], None]:
        def send_pli(ssrc: int) -> None:
            layer = sub.tracks[k].by_ssrc.get(ssrc)
            if layer is not None:
                self._send(PREFIX.pack(PLI, sub.sid, k, layer.index), sub.origin)

        return send_pli

    def send_demand(self, sub: EdgeSub) -> None:
        caps = 0
        for viewer in sub.room.viewers.values():
            top = min(max(viewer.max_layer, 0), HIGH)
            # an adaptive viewer may be moved to any layer up to its cap, and its policy
            # needs each one's measured rate: it demands them all
            adaptive = self.core.allocator.is_adaptive(viewer)
            caps |= (1 << (top + 1)) - 1 if adaptive else 1 << top
        # audio has one layer: any viewer wants it, whatever its video cap
        body = bytes(caps for _ in sub.tracks)
        self._send(PREFIX.pack(DEMAND, sub.sid, 0, 0) + body, sub.origin)

    def end(self, room_name: str, reason: str) -> None:
        """Stop serving `room_name` from the relay: its viewers' sessions end."""
        sub = self.subs.get(room_name)
        if sub is None:
            return
        self._forget(sub)
        self._send(PREFIX.pack(BYE, sub.sid, 0, 0), sub.origin)
        for viewer in list(sub.room.viewers.values()):
            self.core.close_peer(viewer, reason)
        if self.core.rooms.get(room_name) is sub.room:
            self.core.rooms.pop(room_name, None)

    def _forget(self, sub: EdgeSub) -> None:
        if self.subs.get(sub.room.name) is sub:
            del self.subs[sub.room.name]
        self._by_sid.pop(sub.sid, None)

    def received(self, kind: int, sub: EdgeSub, k: int, i: int, data: bytes) -> None:
        now = self.core.now()
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
                    self._send(head + struct.pack(f"!{len(lost)}H", *lost), sub.origin)
                    sub.nacks += len(lost)
            self.core.feed(track, rtp, now, i)
        elif kind == END:
            self.end(sub.room.name, "origin ended the room")
        elif kind == RESTART and k != sub.generation:
            # a new publisher feeds the origin's tracks (it may reuse SSRCs): the viewers
            # here go on at its first keyframe, numbering on, as the origin's do
            sub.generation = k
            for track in sub.tracks:
                track.rebind(track.rids, track.rid_ext, track.request_keyframe)

    def _peer_event(self, event: PeerEvent, peer: Peer) -> None:
        sub = self.subs.get(peer.room.name)
        if sub is None or sub.room is not peer.room:
            return
        if event != "closed":
            self.send_demand(sub)  # a viewer joined or changed its cap
        elif not sub.room.viewers:  # the last viewer left: stop pulling
            self._forget(sub)
            self._send(PREFIX.pack(BYE, sub.sid, 0, 0), sub.origin)
            if self.core.rooms.get(sub.room.name) is sub.room:
                self.core.rooms.pop(sub.room.name, None)

    def tick(self, now: float) -> None:
        """Once a second: a silent origin ends the room here; demand refreshed."""
        for sub in list(self.subs.values()):
            if now - sub.heard_at > RELAY_TIMEOUT_S:
                self.end(sub.room.name, "origin lost")
            else:
                self.send_demand(sub)

    def stats(self) -> dict[str, object]:
        return {
            "edge_rooms": sorted(self.subs),
            "relay_packets_in": self.relay_in,
            "relay_nacks_sent": sum(s.nacks for s in self.subs.values()),
        }
