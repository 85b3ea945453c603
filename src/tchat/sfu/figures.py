"""What the SFU says about itself (`/sfu/stats`, `/live`): counts over its rooms and
peers, computed when asked from the sessions' state; nothing here runs per packet."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from tchat.sfu.forwarder import Layer, NackStats
from tchat.sfu.peer import Peer, Room

if TYPE_CHECKING:
    from tchat.sfu.sessions import SfuSessions


def _layers(rooms: Iterable[Room]) -> Iterator[Layer]:
    for room in rooms:
        for track in room.tracks.values():
            yield from (layer for layer in track.layers if layer is not None)


def live_rooms(rooms: Iterable[Room], now: float) -> dict[str, dict[str, object]]:
    """Rooms with viewers or a connected publisher here: viewer count (media flowing)
    and, where the publisher is on this worker, how long it has been live."""
    out: dict[str, dict[str, object]] = {}
    for room in rooms:
        pub = room.publisher
        origin = pub is not None and not pub.closed and pub.connected_at is not None
        viewers = sum(1 for v in room.viewers.values() if v.srtp is not None)
        if origin or viewers or room.lost is not None:
            out[room.name] = {
                "viewers": viewers,
                "live_for_s": round(now - pub.connected_at, 1)
                if origin and pub is not None and pub.connected_at is not None
                else None,
            }
            if room.lost is not None:  # its publisher was lost and may come back (grace)
                out[room.name]["reconnecting"] = True
    return out


def nack_stats(left: NackStats, peers: Iterable[Peer]) -> NackStats:
    """What every viewer's NACKs asked for and got, since start (`left`: of viewers gone)."""
    total = NackStats()
    total.add(left)
    for peer in peers:
        total.add(peer.nacks)
    return total


def session_stats(s: SfuSessions) -> dict[str, object]:
    peers = s.peers.values()
    return {
        "udp_port": s.port,
        "rooms": len(s.rooms),
        "peers": len(s.peers),
        "load": round(s.load, 3),
        "viewers_connected": sum(1 for p in peers if p.role == "viewer" and p.srtp is not None),
        # what publishers sent that never arrived (RR accounting, current rooms): a
        # viewer cannot get those back, whatever it NACKs
        "publisher_packets_lost": sum(layer.lost for layer in _layers(s.rooms.values())),
        # padding-only packets publishers sent (their probes): never forwarded
        "publisher_padding_packets": sum(layer.padding for layer in _layers(s.rooms.values())),
        "nacks": s.nack_stats().as_dict(),
        "retransmitted_bytes": s.retransmitted_left
        + sum(d.rtx_octets for p in peers for _, d in p.downtracks.values()),
        "ice_restarts": s.ice_restarts,
        "drops": dict(s.drops),
        "fanout": fanout_stats(s),
    }


def fanout_stats(s: SfuSessions) -> dict[str, object]:
    """Which per-packet path runs (sfu/fastpath.py) and, native, what its sendmmsg calls
    did for the current rooms' tracks (a refused datagram is dropped and counted)."""
    fans = [
        t.fanout for room in s.rooms.values() for t in room.tracks.values() if t.fanout is not None
    ]
    return {
        "path": "native" if s.fastpath.native else "python",
        "why": s.fastpath.why,
        "sendmmsg_calls": sum(f.syscalls for f in fans),
        "datagrams": sum(f.datagrams for f in fans),
        "send_errors": sum(f.send_errors for f in fans),
        "protect_errors": sum(f.protect_errors for f in fans),
    }
