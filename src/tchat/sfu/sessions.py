"""The SFU's sessions: WHIP publishers and WHEP viewers, their rooms, admission, teardown.

`SfuSessions` is the registry the core's datagram path looks peers up in (by ICE ufrag,
by confirmed address) and what the HTTP API talks to: `add_publisher` / `add_viewer`
negotiate the SDP and make a `Peer`, `close_peer` ends one (a publisher's viewers with
it). Admission refuses a session before it costs a DTLS context: 503 when full or
overloaded, 429 when one identity or address has too many connecting. No I/O: the
core (sfu/core.py) adds datagrams and timers.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Literal, Protocol

from aiortc.rtcdtlstransport import RTCCertificate

from tchat.rooms import ROOM_RULE, valid_room
from tchat.sfu import fastpath, figures, rtcp, sdp, sdpfrag, twcc
from tchat.sfu.admission import SessionError, release
from tchat.sfu.allocator import StreamAllocator, abr_config
from tchat.sfu.dtls import DtlsEndpoint, fingerprint, make_context
from tchat.sfu.forwarder import HIGH, NackStats
from tchat.sfu.ice import Addr, IceLite, new_credentials
from tchat.sfu.negotiated import SdpError
from tchat.sfu.peer import Peer, Role, Room, SendTo, track_for
from tchat.sfu.reports import SFU_SSRC
from tchat.sfu.settings import SfuSettings
from tchat.sfu.tcp import is_tcp

log = logging.getLogger("tchat.sfu")
# a viewer joined, a viewer's layer cap changed, a session (either role) closed
PeerEvent = Literal["joined", "layer", "closed", "resumed"]


class Stream(Protocol):
    """A TCP connection as the core sees it (sfu/tcp.py's TcpLink)."""

    def write(self, packet: bytes) -> None: ...

    def close(self) -> None: ...


def _nowhere(data: bytes, addr: Addr) -> None:
    pass


class SfuSessions:
    def __init__(
        self, settings: SfuSettings, send: SendTo, clock: Callable[[], float] | None = None
    ) -> None:
        self.settings = settings
        self._udp = send
        # native or Python fan-out (sfu/fastpath.py); the native one sends by udp_fd
        self.fastpath = fastpath.choose(settings.fastpath)
        self.udp_fd = -1  # the UDP socket's descriptor once the shell binds one
        # TCP connections (sfu/tcp.py) by their (tagged) address
        self.streams: dict[Addr, Stream] = {}
        self._clock = clock
        self.load = 0.0  # the SFU's work over the last second, in cores (the core sets it)
        self.cert = RTCCertificate.generateCertificate()
        self.fingerprint = fingerprint(self.cert)
        self.ctx = make_context(self.cert)
        self.port = 0  # the UDP port in our candidates (the shell binds it)
        self.tcp_port = 0  # the ICE-TCP port in our candidates, 0 if none (sfu/tcp.py)
        self.rooms: dict[str, Room] = {}
        self.peers: dict[str, Peer] = {}
        self.by_ufrag: dict[str, Peer] = {}
        self.by_addr: dict[Addr, Peer] = {}
        self.handshaking: set[Peer] = set()
        # sessions still connecting (or waiting to: sfu/admission.py), per token
        # identity and per client address
        self.connecting: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.connect_times: list[float] = []
        self.nack_totals = NackStats()  # of viewers that have left
        self.retransmitted_left = 0  # bytes resent to viewers that have left
        self.ice_restarts = 0
        # called with (publisher, True) once its media flows, (publisher, False) when it
        # ends: the recorder (recording/live.py) hangs off these, through taps (sfu/tap.py)
        self.publish_listeners: list[Callable[[Peer, bool], None]] = []
        # called with each PeerEvent (a closed peer's room already updated): the cluster's
        # relay roles (sfu/cluster/) follow sessions through these
        self.peer_listeners: list[Callable[[PeerEvent, Peer], None]] = []
        # adaptive viewers' layers, probes and tiers (per-second policy, sfu/allocator.py)
        self.allocator = StreamAllocator(abr_config(settings))

    def _send(self, data: bytes, addr: Addr) -> None:
        self.sender(addr)(data, addr)

    def sender(self, addr: Addr) -> SendTo:
        """What sends to `addr`: the UDP socket, or the TCP connection that address is
        (nothing once that closed). Bound once per selected address, so the per-packet
        path does no lookup."""
        if not is_tcp(addr):
            return self._udp
        stream = self.streams.get(addr)
        return _nowhere if stream is None else (lambda data, _addr: stream.write(data))

    def _forget(self, peer: Peer, addrs: Iterable[Addr]) -> None:
        """Addresses that no longer name `peer`; their TCP connections are closed."""
        for addr in addrs:
            if self.by_addr.get(addr) is peer:
                del self.by_addr[addr]
            stream = self.streams.get(addr)
            if stream is not None:
                stream.close()

    def stream_closed(self, addr: Addr) -> None:
        """A TCP connection ended: nothing more goes to it, and it names no session."""
        self.streams.pop(addr, None)
        peer = self.by_addr.pop(addr, None)
        if peer is not None:
            peer.ice.forget(addr)
            if peer.addr == addr:
                peer.unselect()  # media waits for the peer's next nominated address

    def now(self) -> float:
        assert self._clock is not None
        return self._clock()

    # -- signalling ------------------------------------------------------------------
    def _local(self, ufrag: str, pwd: str) -> sdp.LocalParams:
        ip = self.settings.candidate_ip
        return sdp.LocalParams(ufrag, pwd, self.fingerprint, ip, self.port, self.tcp_port)

    def _new_peer(
        self,
        room: Room,
        role: Role,
        neg: sdp.Negotiated,
        ufrag: str,
        pwd: str,
        owner: str = "",
        source: str = "",
    ) -> Peer:
        now = self.now()
        peer = Peer(
            id=secrets.token_urlsafe(12),
            room=room,
            role=role,
            ice=IceLite(ufrag, pwd, neg.remote_ufrag, created_at=now, remote_pwd=neg.remote_pwd),
            dtls=DtlsEndpoint(self.ctx, True, neg.remote_fingerprints, self.fastpath.module),
            media=neg.media,
            created_at=now,
            owner=owner,
            source=source,
            udp_fd=self.udp_fd,
        )
        self.peers[peer.id] = peer
        self.by_ufrag[ufrag] = peer
        self.handshaking.add(peer)
        self.connecting.update(peer.connecting_keys())
        return peer

    def _handshake_over(self, peer: Peer) -> None:
        if peer in self.handshaking:
            self.handshaking.discard(peer)
            release(self.connecting, peer.connecting_keys())

    def _check_capacity(
        self, role: Role, owner: str = "", source: str = "", load: bool = True
    ) -> None:
        """503 when full (viewers leave a share to publishers) or overloaded (unless not
        `load`: sfu/admission.py waits that out); 429 when the token identity or the client
        address already has too many sessions connecting or waiting to: a session holds a
        DTLS context and a peer slot until it connects or times out."""
        cfg = self.settings
        limit = cfg.max_peers if role == "publisher" else cfg.max_viewers
        if len(self.peers) >= limit:
            raise SessionError(503, f"SFU is full ({len(self.peers)} sessions)")
        if load and self.load > cfg.max_load:
            # past one core, new sessions' handshakes queue behind media and time out,
            # and everyone's packets start to drop: refuse instead (the client retries)
            raise SessionError(503, f"SFU is overloaded ({self.load:.0%} of a core)")
        if owner and self.connecting["id:" + owner] >= cfg.max_connecting_per_identity:
            raise SessionError(
                429, f"{cfg.max_connecting_per_identity} sessions of this token are connecting"
            )
        if source and self.connecting["ip:" + source] >= cfg.max_connecting_per_address:
            raise SessionError(
                429, f"{cfg.max_connecting_per_address} sessions from this address are connecting"
            )

    def add_publisher(
        self, room_name: str, offer: str, owner: str = "", source: str = ""
    ) -> tuple[Peer, str]:
        _check_room(room_name)
        self._check_capacity("publisher", owner, source)
        room = self.rooms.get(room_name)
        if room is not None and room.publisher is not None and not room.publisher.closed:
            raise SessionError(409, f"room {room_name!r} already has a publisher")
        ufrag, pwd = new_credentials()
        neg = sdp.negotiate_whip(offer, self._local(ufrag, pwd))
        room = room or Room(room_name)
        self.rooms[room_name] = room
        peer = self._new_peer(room, "publisher", neg, ufrag, pwd, owner, source)
        room.publisher = peer
        lost, room.lost = room.lost, None
        same = {m.kind: m.codec.mime for m in neg.media if m.codec is not None}
        if lost is not None and same == {k: t.mime for k, t in room.tracks.items()}:
            peer.resumes = lost  # the same stream goes on: its tracks, viewers, recording
        elif lost is not None:
            self._end_stream(room, lost)  # other codecs: its viewers cannot go on
        if peer.resumes is None:
            room.tracks = {}
        for m in neg.media:
            assert m.codec is not None
            track = room.tracks.get(m.kind)
            if track is None:
                track = room.tracks[m.kind] = track_for(m, self._pli_sender(peer))
            else:  # each viewer goes on at the new publisher's first keyframe
                track.rebind(m.rids, m.rid_ext, self._pli_sender(peer))
            peer.track_by_pt[m.codec.payload_type] = track
            if m.twcc_ext and peer.twcc_in is None:
                # one transport-wide sequence across the bundle (browsers use one id)
                peer.twcc_in_ext = m.twcc_ext
                peer.twcc_in = twcc.TwccReceiver()
        if peer.resumes is not None:
            self._emit("resumed", peer)  # the same tracks, fed by another source from now
        log.info("whip room=%s peer=%s media=%s", room_name, peer.id, _describe(neg.media))
        return peer, neg.answer

    def add_viewer(
        self,
        room_name: str,
        offer: str,
        max_layer: int = HIGH,
        owner: str = "",
        source: str = "",
        load: bool = True,  # False: sfu/admission.py waited the load out already
    ) -> tuple[Peer, str]:
        _check_room(room_name)
        self._check_capacity("viewer", owner, source, load)
        room = self.rooms.get(room_name)
        media = room.media() if room is not None else None
        if room is None or media is None:
            raise SessionError(404, f"room {room_name!r} has no publisher")
        sources = {m.kind: m.codec for m in media if m.codec is not None}
        ssrcs = {kind: secrets.randbits(31) | 1 for kind in sources}
        rtx_ssrcs = {kind: secrets.randbits(31) | 1 for kind in sources}
        ufrag, pwd = new_credentials()
        neg = sdp.negotiate_whep(
            offer, self._local(ufrag, pwd), sources, ssrcs, self.settings.abr, rtx_ssrcs
        )
        peer = self._new_peer(room, "viewer", neg, ufrag, pwd, owner, source)
        peer.max_layer = max_layer
        room.viewers[peer.id] = peer
        self._emit("joined", peer)
        return peer, neg.answer

    def set_max_layer(self, peer: Peer, max_layer: int) -> None:
        peer.max_layer = max_layer
        now = self.now()
        for track, dt in peer.downtracks.values():
            track.set_max_layer(dt, max_layer, now)
        self._emit("layer", peer)

    def patch_ice(
        self,
        peer: Peer,
        fragment: sdpfrag.IceFragment,
        expect: tuple[str, ...] | None = None,
    ) -> str | None:
        """A WHIP/WHEP PATCH: with new remote credentials an ICE restart, answered with our
        fragment (new ufrag/pwd, same candidates); else trickled candidates, accepted and
        not needed (a lite agent learns the peer's addresses from its checks): None.
        412 when If-Match names only earlier ICE sessions (`expect`: their ufrags) or the
        fragment is of a generation restarted since."""
        ice = peer.ice
        if peer.closed:
            raise SessionError(404, f"{peer.role} session {peer.id!r} has ended")
        if expect is not None and ice.local_ufrag not in expect:
            raise SessionError(412, "If-Match names an ICE session that was restarted since")
        if fragment.ufrag is not None and fragment.ufrag in ice.previous:
            raise SessionError(412, "the fragment is of an ICE session restarted since")
        if fragment.ufrag is None or fragment.ufrag == ice.remote_ufrag:
            if expect is None and fragment.pwd == ice.remote_pwd and not fragment.candidates:
                # the restart we answered, asked again (our answer was lost): same answer
                return sdpfrag.write_fragment(
                    self._local(ice.local_ufrag, ice.local_pwd), peer.media
                )
            return None
        if fragment.pwd is None:
            raise SdpError("an ICE restart needs a=ice-pwd with the new a=ice-ufrag")
        self.by_ufrag.pop(ice.local_ufrag, None)
        ufrag, pwd = new_credentials()
        forgotten = ice.restart((ufrag, pwd), (fragment.ufrag, fragment.pwd), peer.addr)
        self.by_ufrag[ufrag] = peer
        self._forget(peer, forgotten)
        peer.held = [(a, d) for a, d in peer.held if a not in forgotten]
        self.ice_restarts += 1
        log.info("sfu ice restart room=%s peer=%s role=%s", peer.room.name, peer.id, peer.role)
        return sdpfrag.write_fragment(self._local(ufrag, pwd), peer.media)

    def _end_stream(self, room: Room, publisher: Peer, announce: bool = True) -> None:
        """The stream ended: its viewers have nothing left to watch. `announce`: `closed`
        again for its lost publisher, for good (a cluster origin keeps edges till then)."""
        room.lost = None
        if publisher.connected_at is not None:
            self._notify(publisher, False)
        for viewer in list(room.viewers.values()):
            self.close_peer(viewer, "publisher left")
        room.tracks = {}
        if announce:
            self._emit("closed", publisher)

    def end_lost(self, now: float) -> None:
        """Once a second: rooms whose lost publisher did not come back in time end."""
        for room in list(self.rooms.values()):
            if room.lost is not None and now >= room.grace_until:
                self._end_stream(room, room.lost)
                if room.publisher is None and self.rooms.get(room.name) is room:
                    self.rooms.pop(room.name, None)

    def close_peer(self, peer: Peer, reason: str, resumable: bool = False) -> None:
        """End a session. `resumable`: a publisher lost rather than ended (no DELETE):
        its room waits `publisher_grace_s` for a new publish (see Room.lost)."""
        if peer.closed:
            return
        peer.closed = True
        peer.close_dtls(self._send)
        self.peers.pop(peer.id, None)
        self.by_ufrag.pop(peer.ice.local_ufrag, None)
        self._forget(peer, list(peer.ice.candidates))
        self._handshake_over(peer)
        self.allocator.remove(peer)
        self.nack_totals.add(peer.nacks)
        self.retransmitted_left += sum(d.rtx_octets for _, d in peer.downtracks.values())
        for track, dt in peer.downtracks.values():
            track.remove(dt)
        peer.downtracks.clear()
        room = peer.room
        if peer.role == "viewer":
            room.viewers.pop(peer.id, None)
        elif room.publisher is peer:
            room.publisher = None
            # lost (not ended by DELETE), or a resume that never connected: wait on
            lost = peer if peer.connected_at is not None else peer.resumes
            grace = self.settings.publisher_grace_s
            until = self.now() + grace if lost is peer else room.grace_until
            if resumable and grace > 0 and lost is not None and until > self.now():
                room.lost, room.grace_until = lost, until
                log.info("sfu room=%s waits %.0fs for its publisher", room.name, until - self.now())
            else:
                self._end_stream(room, lost or peer, announce=lost not in (None, peer))
        empty = room.publisher is None and room.lost is None and not room.viewers
        if empty and self.rooms.get(room.name) is room:
            self.rooms.pop(room.name, None)
        log.info(
            "sfu close room=%s peer=%s role=%s reason=%s", room.name, peer.id, peer.role, reason
        )
        self._emit("closed", peer)

    # -- events out ------------------------------------------------------------------
    def _notify(self, peer: Peer, live: bool) -> None:
        for listener in self.publish_listeners:
            try:
                listener(peer, live)
            except Exception:  # a listener's failure must not end the stream
                log.exception("publish listener failed room=%s", peer.room.name)

    def _emit(self, event: PeerEvent, peer: Peer) -> None:
        for listener in self.peer_listeners:
            try:
                listener(event, peer)
            except Exception:  # a listener's failure must not break the session
                log.exception("peer listener failed (%s) room=%s", event, peer.room.name)

    def _pli_sender(self, peer: Peer) -> Callable[[int], None]:
        def send_pli(media_ssrc: int) -> None:
            peer.send_rtcp(rtcp.pli(SFU_SSRC, media_ssrc))

        return send_pli

    # -- figures (sfu/figures.py) ----------------------------------------------------
    def live_rooms(self) -> dict[str, dict[str, object]]:
        return figures.live_rooms(self.rooms.values(), self.now())

    def _stats(self) -> dict[str, object]:
        return figures.session_stats(self)

    def nack_stats(self) -> NackStats:
        return figures.nack_stats(self.nack_totals, self.peers.values())


def _check_room(name: str) -> None:
    if not valid_room(name):
        raise SessionError(400, f"invalid room name: {ROOM_RULE}")


def _describe(media: list[sdp.Media]) -> str:
    return ",".join(
        f"{m.kind}:{m.codec.mime if m.codec else '-'}{'/' + '|'.join(m.rids) if m.rids else ''}"
        for m in media
    )
