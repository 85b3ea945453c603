"""The SFU worker: one UDP port for every peer, rooms, sessions, timers.

`SfuWorker` is the asyncio shell around the sans-I/O cores. Datagrams are
demultiplexed by their first byte (RFC 7983): STUN requests go to the session whose
ICE ufrag is in USERNAME, STUN responses, DTLS and SRTP/SRTCP to the session that owns
the source address (learnt from an authenticated STUN check). DTLS is handled, and
media sent, only with an address that answered our own check (sfu/ice.py: a spoofed
check must not aim a stream at a victim); DTLS arriving before that is held. Anything
else is dropped and counted in `drops`; nothing a peer sends can raise out of
`datagram_received`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import pylibsrtp
from aiortc.rtcdtlstransport import RTCCertificate

from tchat.abr.controller import DECIDE_S, AbrConfig, ViewerAbr
from tchat.abr.estimator import PacketFeedback
from tchat.abr.policy import PolicyConfig
from tchat.aio import cancel_and_wait
from tchat.rooms import ROOM_RULE, valid_room
from tchat.sfu import rtcp, sdp, twcc
from tchat.sfu.dtls import DtlsEndpoint, DtlsState, SrtpSessions, fingerprint, make_context
from tchat.sfu.forwarder import (
    HIGH,
    NACK_MAX,
    DownTrack,
    Layer,
    NackStats,
    RetransmitBudget,
    Track,
    TwccSender,
)
from tchat.sfu.ice import (
    Addr,
    IceLite,
    Keepalive,
    StunError,
    new_credentials,
    parse_request,
    parse_response,
)
from tchat.sfu.rtp import (
    DTLS_MAX,
    DTLS_MIN,
    RTP_LIMIT,
    RTP_MAX,
    RTP_MIN,
    STUN_MAX,
    header_extension,
    is_rtcp,
)
from tchat.sfu.settings import SfuSettings

log = logging.getLogger("tchat.sfu")
Role = Literal["publisher", "viewer"]
TICK_S = 0.1
PACE_S = 0.02  # timer step while a bandwidth probe pads (paced, not 100 ms bursts)
SOCKET_BUFFER_BYTES = 8 * 1024 * 1024


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


SFU_SSRC = 0x7C4A7000  # sender SSRC of our own RTCP (PLI towards publishers)
STUN_BINDING_SUCCESS = b"\x01\x01"
MAX_HELD_DTLS = 8  # a client's first flight is 1-2 datagrams
MAX_HELD_BYTES = 2048  # of a datagram held (DTLS records fit the path MTU)


class SessionError(Exception):
    """A WHIP/WHEP request that cannot be served; `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class Peer:
    id: str
    room: Room
    role: Role
    ice: IceLite
    dtls: DtlsEndpoint
    media: list[sdp.Media]
    created_at: float
    owner: str = ""  # the token identity that made the session
    source: str = ""  # the HTTP client address that made it
    max_layer: int = HIGH
    addr: Addr | None = None
    srtp: SrtpSessions | None = None
    send: Callable[[bytes], None] = lambda data: None
    connected_at: float | None = None
    closed: bool = False
    track_by_pt: dict[int, Track] = field(default_factory=dict)  # publisher
    # publisher: transport-wide CC arrivals we feed back (None: not negotiated)
    twcc_in: twcc.TwccReceiver | None = None
    twcc_in_ext: int = 0
    downtracks: dict[int, tuple[Track, DownTrack]] = field(default_factory=dict)  # viewer
    # DTLS from an address not confirmed yet (a handshake overtaking our check's answer)
    held: list[tuple[Addr, bytes]] = field(default_factory=list)
    rtp_in: int = 0
    media_at: float = 0.0  # when rtp_in last grew, checked once a second (publishers)
    rtp_seen: int = 0
    rtcp_in: int = 0
    # adaptive quality (viewers that negotiated transport-wide CC)
    abr: ViewerAbr | None = None
    twcc: TwccSender | None = None
    video: tuple[Track, DownTrack] | None = None
    playout_ext: int = 0
    abr_octets: int = 0  # media payload bytes sent, at the previous tick
    abr_packets: int = 0  # video packets sent, at the previous decision
    abr_tick: float = 0.0
    # viewer: retransmissions (NACK answers) allowed per second, and what NACKs asked
    resend: RetransmitBudget = field(default_factory=RetransmitBudget)
    nacks: NackStats = field(default_factory=NackStats)
    sent_mark: tuple[float, int] = (0.0, 0)  # (time, bytes sent) at the last second


@dataclass(eq=False)
class Room:
    name: str
    publisher: Peer | None = None
    tracks: dict[str, Track] = field(default_factory=dict)
    viewers: dict[str, Peer] = field(default_factory=dict)


class SfuWorker(asyncio.DatagramProtocol):
    def __init__(
        self,
        settings: SfuSettings,
        clock: Callable[[], float] | None = None,
        cpu_clock: Callable[[], float] | None = None,
        busy_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.settings = settings
        # The admission gate's load is the SFU's own work. In `tchat serve`'s process the
        # loop also serves HTTP and chat, whose floods must not refuse every WHIP: there it
        # is the time spent in our datagram and timer handlers (`busy`, on busy_clock). A
        # process that only runs the SFU (a cluster node) passes its CPU clock instead.
        self._cpu_clock = cpu_clock
        self._busy_clock = busy_clock
        self.busy = 0.0  # seconds spent in the SFU's handlers
        self._cpu_mark: tuple[float, float] | None = None  # (now, work seconds) a second ago
        self.load = 0.0  # the SFU's work over the last second, in cores
        self.cert = RTCCertificate.generateCertificate()
        self.fingerprint = fingerprint(self.cert)
        self.ctx = make_context(self.cert)
        self.rooms: dict[str, Room] = {}
        self.peers: dict[str, Peer] = {}
        self.by_ufrag: dict[str, Peer] = {}
        self.by_addr: dict[Addr, Peer] = {}
        self.handshaking: set[Peer] = set()
        # sessions still connecting, per token identity and per client address
        self.connecting: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.connect_times: list[float] = []
        self.delivered = 0  # RTP packets sent to viewers (not counting NACK answers)
        self.keepalives = 0  # binding indications from a selected pair (libnice peers)
        self.nack_totals = NackStats()  # of viewers that have left
        self.retransmitted_left = 0  # bytes resent to viewers that have left
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None
        self._clock = clock
        self._timer: asyncio.Task[None] | None = None
        self._last_second = 0.0
        self._last_sr = 0.0
        # called with (publisher, True) once its media flows, (publisher, False) when it
        # ends: the recorder sink (sfu/recording_sink.py) hangs off these
        self.publish_listeners: list[Callable[[Peer, bool], None]] = []
        self._last_decide = 0.0
        self._probing = False  # some viewer's probe is padding: pace every PACE_S
        self.abr_peers: set[Peer] = set()
        self.abr_config = AbrConfig(
            policy=PolicyConfig(
                up_after_s=settings.abr_up_after_s,
                no_up_after_down_s=settings.abr_hold_after_down_s,
                headroom=settings.abr_headroom,
            ),
            initial_bps=settings.abr_initial_bps,
            probe_interval_s=settings.abr_probe_interval_s,
            probe_max_bps=settings.abr_probe_max_bps,
        )

    # -- lifetime ------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = loop.time
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.settings.udp_host, self.settings.udp_port)
        )
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        # a keyframe fanned out to thousands of viewers is one burst: let the kernel
        # queue it rather than drop
        widen_socket_buffers(transport)
        self._timer = asyncio.create_task(self._run_timers(), name="sfu-timers")
        log.info("sfu listening udp=%s:%d", self.settings.udp_host, self.port)

    async def stop(self) -> None:
        for peer in list(self.peers.values()):
            self.close_peer(peer, "shutdown")
        await cancel_and_wait(self._timer)
        if self.transport:
            self.transport.close()

    def now(self) -> float:
        assert self._clock is not None
        return self._clock()

    # -- signalling -------------------------------------------------------------------
    def _local(self, ufrag: str, pwd: str) -> sdp.LocalParams:
        return sdp.LocalParams(ufrag, pwd, self.fingerprint, self.settings.candidate_ip, self.port)

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
            dtls=DtlsEndpoint(self.ctx, server=True, remote_fingerprints=neg.remote_fingerprints),
            media=neg.media,
            created_at=now,
            owner=owner,
            source=source,
        )
        self.peers[peer.id] = peer
        self.by_ufrag[ufrag] = peer
        self.handshaking.add(peer)
        self.connecting.update(_connecting_keys(peer))
        return peer

    def _handshake_over(self, peer: Peer) -> None:
        if peer in self.handshaking:
            self.handshaking.discard(peer)
            for key in _connecting_keys(peer):
                self.connecting[key] -= 1
                if self.connecting[key] <= 0:
                    del self.connecting[key]  # the counter holds connecting sessions only

    def _check_capacity(self, role: Role, owner: str = "", source: str = "") -> None:
        """503 when full (viewers leave a share to publishers) or overloaded; 429 when the
        token identity or the client address already has too many sessions connecting:
        a session holds a DTLS context and a peer slot until it connects or times out."""
        cfg = self.settings
        limit = cfg.max_peers if role == "publisher" else cfg.max_viewers
        if len(self.peers) >= limit:
            raise SessionError(503, f"SFU is full ({len(self.peers)} sessions)")
        if self.load > cfg.max_load:
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
        room.tracks = {}
        for m in neg.media:
            assert m.codec is not None
            track = track_for(m, self._pli_sender(peer))
            room.tracks[m.kind] = track
            peer.track_by_pt[m.codec.payload_type] = track
            if m.twcc_ext and peer.twcc_in is None:
                # one transport-wide sequence across the bundle (browsers use one id)
                peer.twcc_in_ext = m.twcc_ext
                peer.twcc_in = twcc.TwccReceiver()
        log.info("whip room=%s peer=%s media=%s", room_name, peer.id, _describe(neg.media))
        return peer, neg.answer

    def add_viewer(
        self,
        room_name: str,
        offer: str,
        max_layer: int = HIGH,
        owner: str = "",
        source: str = "",
    ) -> tuple[Peer, str]:
        _check_room(room_name)
        self._check_capacity("viewer", owner, source)
        room = self.rooms.get(room_name)
        if room is None or room.publisher is None or room.publisher.closed:
            raise SessionError(404, f"room {room_name!r} has no publisher")
        return self._join_viewer(room, room.publisher.media, offer, max_layer, owner, source)

    def _join_viewer(
        self,
        room: Room,
        media: list[sdp.Media],
        offer: str,
        max_layer: int,
        owner: str = "",
        source: str = "",
    ) -> tuple[Peer, str]:
        """A viewer of `room`, whose source is `media` (the publisher's, or the relay's)."""
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
        return peer, neg.answer

    def set_max_layer(self, peer: Peer, max_layer: int) -> None:
        peer.max_layer = max_layer
        now = self.now()
        for track, dt in peer.downtracks.values():
            track.set_max_layer(dt, max_layer, now)

    def close_peer(self, peer: Peer, reason: str) -> None:
        if peer.closed:
            return
        peer.closed = True
        if peer.dtls.state == DtlsState.CONNECTED and peer.addr is not None:
            peer.dtls.close()
            for data in peer.dtls.datagrams_to_send():
                self._sendto(data, peer.addr)
        self.peers.pop(peer.id, None)
        self.by_ufrag.pop(peer.ice.local_ufrag, None)
        for addr in peer.ice.candidates:
            if self.by_addr.get(addr) is peer:
                del self.by_addr[addr]
        self._handshake_over(peer)
        self.abr_peers.discard(peer)
        self.nack_totals.add(peer.nacks)
        self.retransmitted_left += sum(d.rtx_octets for _, d in peer.downtracks.values())
        for track, dt in peer.downtracks.values():
            track.remove(dt)
        peer.downtracks.clear()
        room = peer.room
        if peer.role == "viewer":
            room.viewers.pop(peer.id, None)
        elif room.publisher is peer:
            if peer.connected_at is not None:
                self._notify(peer, False)
            # the stream ended: its viewers have nothing left to watch
            for viewer in list(room.viewers.values()):
                self.close_peer(viewer, "publisher left")
            room.publisher = None
            room.tracks = {}
        if room.publisher is None and not room.viewers:
            self.rooms.pop(room.name, None)
        log.info(
            "sfu close room=%s peer=%s role=%s reason=%s", room.name, peer.id, peer.role, reason
        )

    # -- datagrams --------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Addr) -> None:
        started = self._busy_clock()
        try:
            self._datagram(data, addr)
        finally:
            self.busy += self._busy_clock() - started

    def _datagram(self, data: bytes, addr: Addr) -> None:
        if not data:
            self.drops["empty"] += 1
            return
        try:
            first = data[0]
            if RTP_MIN <= first <= RTP_MAX:
                peer = self.by_addr.get(addr)
                if peer is None or peer.srtp is None:
                    self.drops["rtp_unknown_peer"] += 1
                elif is_rtcp(data):
                    self._rtcp(peer, data, addr)
                else:
                    self._rtp(peer, data, addr)
            elif first <= STUN_MAX:
                self._stun(data, addr)
            elif DTLS_MIN <= first <= DTLS_MAX:
                self._dtls(data, addr)
            else:
                self.drops["unknown_first_byte"] += 1
        except Exception:  # a peer's bytes must never stop the worker
            self.drops["error"] += 1
            log.debug("sfu datagram from %s raised", addr, exc_info=True)

    def _rtp(self, peer: Peer, data: bytes, addr: Addr | None = None) -> None:
        if peer.role != "publisher":
            self.drops["rtp_from_viewer"] += 1
            return
        assert peer.srtp is not None
        try:
            plain = peer.srtp.rx.unprotect(data)
        except pylibsrtp.Error:
            self.drops["srtp_unprotect"] += 1
            return
        except ValueError:  # longer than the SRTP buffer
            self._too_large(peer, len(data))
            return
        now = self.now()
        if addr == peer.addr:  # authenticated, on the selected pair: the peer is alive
            peer.ice.heard(now)
        if len(plain) > RTP_LIMIT:
            self._too_large(peer, len(plain))
            return
        track = peer.track_by_pt.get(plain[1] & 0x7F)
        if track is None:
            self.drops["rtp_unknown_pt"] += 1
            return
        peer.rtp_in += 1
        if peer.twcc_in is not None:
            value = header_extension(plain, peer.twcc_in_ext)
            if value is not None and len(value) >= 2:
                peer.twcc_in.on_packet((value[0] << 8) | value[1], now)
        try:
            self.delivered += track.forward(plain, now)
        except ValueError:
            self.drops["rtp_malformed"] += 1

    def _too_large(self, peer: Peer, size: int) -> None:
        self.drops["rtp_too_large"] += 1
        n = self.drops["rtp_too_large"]
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th…: visible, never a flood
            log.warning(
                "sfu dropped a %d-byte RTP packet from room=%s peer=%s: over %d bytes, "
                "it cannot reach viewers within a 1500-byte MTU (%d such drops)",
                size,
                peer.room.name,
                peer.id,
                RTP_LIMIT,
                n,
            )

    def _rtcp(self, peer: Peer, data: bytes, addr: Addr | None = None) -> None:
        assert peer.srtp is not None
        try:
            plain = peer.srtp.rx.unprotect_rtcp(data)
        except pylibsrtp.Error:
            self.drops["srtcp_unprotect"] += 1
            return
        now = self.now()
        if addr == peer.addr:
            peer.ice.heard(now)
        try:
            packets = rtcp.parse(plain)
        except ValueError:
            self.drops["rtcp_malformed"] += 1
            return
        peer.rtcp_in += 1
        if peer.abr is not None:
            self._feedback(peer, plain, now)
        if peer.role == "publisher":
            # keep each stream's last SR so our receiver reports let it measure RTT
            for pkt in packets:
                if isinstance(pkt, rtcp.RtcpSrPacket):
                    for track in peer.room.tracks.values():
                        layer = track.by_ssrc.get(pkt.ssrc)
                        if layer is not None:
                            layer.sr_ntp_mid = (pkt.sender_info.ntp_timestamp >> 16) & 0xFFFFFFFF
                            layer.sr_arrival = now
            return
        resend = NACK_MAX  # retransmissions this datagram may cause, all NACKs together
        for pkt in packets:
            if isinstance(pkt, rtcp.RtcpRrPacket | rtcp.RtcpSrPacket):
                for report in pkt.reports:
                    pair = peer.downtracks.get(report.ssrc)
                    if pair is not None:
                        dt = pair[1]
                        dt.fraction_lost = report.fraction_lost
                        dt.rr_lost = report.packets_lost
                        dt.jitter = report.jitter
                        if report.lsr:
                            dt.rtt_s = rtcp.round_trip_s(time.time(), report.lsr, report.dlsr)
                        if peer.abr is not None and pair is peer.video:
                            peer.abr.on_receiver_report(now, report.fraction_lost / 256)
            elif isinstance(pkt, rtcp.RtcpRtpfbPacket) and pkt.fmt == rtcp.RTPFB_NACK:
                pair = peer.downtracks.get(pkt.media_ssrc)
                if pair is not None:
                    resend -= pair[0].nack(pair[1], pkt.lost, now, peer.resend, max(0, resend))
                    if peer.abr is not None and pair is peer.video:
                        peer.abr.on_nack(len(pkt.lost))
            elif isinstance(pkt, rtcp.RtcpPsfbPacket) and pkt.fmt in (rtcp.PSFB_PLI, rtcp.PSFB_FIR):
                pair = peer.downtracks.get(pkt.media_ssrc)
                if pair is None and pkt.fmt == rtcp.PSFB_FIR and len(pkt.fci) >= 4:
                    pair = peer.downtracks.get(int.from_bytes(pkt.fci[:4], "big"))
                if pair is not None:
                    pair[0].keyframe_wanted(pair[1], now)

    def _feedback(self, peer: Peer, plain: bytes, now: float) -> None:
        """Transport-wide CC feedback → the viewer's estimator (send times from our ring)."""
        assert peer.abr is not None and peer.twcc is not None
        try:
            reports = twcc.find_feedback(plain)
        except ValueError:
            self.drops["twcc_malformed"] += 1
            return
        lookup = peer.twcc.lookup
        for fb in reports:
            packets = []
            for seq, arrival in fb.arrivals:
                sent = lookup(seq)
                if sent is not None:
                    packets.append(PacketFeedback(sent[0], arrival, sent[1]))
            if packets:
                peer.abr.on_feedback(now, packets)

    def _stun(self, data: bytes, addr: Addr) -> None:
        if data[:2] == STUN_BINDING_SUCCESS:
            self._stun_response(data, addr)
            return
        try:
            msg, ufrag = parse_request(data)
            peer = self.by_ufrag.get(ufrag)
            if peer is None:
                raise StunError("unknown ufrag")
            owner = self.by_addr.get(addr)
            if owner is not None and owner is not peer:
                raise StunError("addr taken")
            replies = peer.ice.handle(msg, addr, self.now(), len(data))
        except Keepalive:  # an indication: keeps NAT bindings open, proves nothing
            known = self.by_addr.get(addr)
            if known is not None and known.addr == addr:
                self.keepalives += 1
            else:
                self.drops["stun_indication_unknown_peer"] += 1
            return
        except StunError as exc:
            self.drops["stun_" + str(exc).split(":")[0].replace(" ", "_")[:32]] += 1
            return
        self.by_addr[addr] = peer
        self._follow(peer, addr)
        for reply in replies:
            self._sendto(reply, addr)

    def _stun_response(self, data: bytes, addr: Addr) -> None:
        """The answer to our check: `addr` receives what we send it (ice.py)."""
        peer = self.by_addr.get(addr)
        msg = parse_response(data)
        if peer is None or msg is None or not peer.ice.handle_response(msg, addr):
            self.drops["stun_response_unexpected"] += 1
            return
        self._follow(peer, addr)
        held = [d for a, d in peer.held if a == addr]
        peer.held = [(a, d) for a, d in peer.held if a != addr]
        for d in held:
            self._dtls(d, addr)

    def _follow(self, peer: Peer, addr: Addr) -> None:
        """Media goes to the nominated address once it is confirmed; until then it stays
        where it was."""
        if peer.ice.nominated == addr and peer.addr != addr and addr in peer.ice.confirmed:
            self._select(peer, addr)

    def _select(self, peer: Peer, addr: Addr) -> None:
        peer.addr = addr
        sendto = self._sendto
        peer.send = lambda data: sendto(data, addr)
        for _, dt in peer.downtracks.values():
            dt.send = peer.send

    def _dtls(self, data: bytes, addr: Addr) -> None:
        peer = self.by_addr.get(addr)
        if peer is None:
            self.drops["dtls_unknown_peer"] += 1
            return
        if addr not in peer.ice.confirmed:
            if len(peer.held) < MAX_HELD_DTLS and len(data) <= MAX_HELD_BYTES:
                peer.held.append((addr, data))  # handled once addr answers our check
            else:
                self.drops["dtls_unconfirmed"] += 1
            return
        if peer.addr is None:
            self._select(peer, addr)  # DTLS may overtake the nominating check
        was = peer.dtls.state
        peer.dtls.receive(data)
        for out in peer.dtls.datagrams_to_send():
            self._sendto(out, addr)
        state = peer.dtls.state
        if state == DtlsState.CONNECTED and was == DtlsState.HANDSHAKE:
            self._connected(peer)
        elif state == DtlsState.FAILED:
            self.drops["dtls_failed"] += 1
            self.close_peer(peer, peer.dtls.error)
        elif state == DtlsState.CLOSED:
            self.close_peer(peer, "peer closed DTLS")

    def _connected(self, peer: Peer) -> None:
        now = self.now()
        self._handshake_over(peer)
        peer.srtp = peer.dtls.srtp
        peer.connected_at = now
        self.connect_times.append(now - peer.created_at)
        if len(self.connect_times) > 100_000:
            del self.connect_times[:50_000]
        if peer.role == "viewer":
            assert peer.srtp is not None
            protect = peer.srtp.tx.protect
            adaptive = any(m.twcc_ext for m in peer.media)
            if adaptive:
                peer.twcc = TwccSender()
                peer.abr = ViewerAbr(self.abr_config, min(1, peer.max_layer), now)
                peer.abr_tick = now
            for m in peer.media:
                track = peer.room.tracks.get(m.kind)
                if m.codec is None or track is None:
                    continue
                dt = DownTrack(
                    ssrc=m.ssrc,
                    pt=m.codec.payload_type,
                    clock_rate=m.codec.clock_rate,
                    protect=protect,
                    send=peer.send,
                    max_layer=peer.max_layer,
                    first_seq=secrets.randbits(16),
                    first_ts=secrets.randbits(32),
                )
                dt.nack_stats = peer.nacks  # one tally per viewer
                if m.rtx_pt and m.rtx_ssrc:
                    dt.enable_rtx(m.rtx_ssrc, m.rtx_pt, secrets.randbits(16))
                peer.downtracks[m.ssrc] = (track, dt)
                if peer.twcc is not None and m.twcc_ext:
                    dt.enable_twcc(peer.twcc, m.twcc_ext)
                    if m.kind == "video" and peer.abr is not None:
                        peer.video = (track, dt)
                        peer.playout_ext = m.playout_ext
                        dt.abr_layer = peer.abr.layer
                        self._set_playout(peer)
                track.add(dt, now)
            if peer.abr is not None and peer.video is not None:
                self.abr_peers.add(peer)
        else:
            self._notify(peer, True)
        log.debug(
            "sfu connected peer=%s role=%s in %.3fs", peer.id, peer.role, now - peer.created_at
        )

    def _notify(self, peer: Peer, live: bool) -> None:
        for listener in self.publish_listeners:
            try:
                listener(peer, live)
            except Exception:  # a listener's failure must not end the stream
                log.exception("publish listener failed room=%s", peer.room.name)

    def _pli_sender(self, peer: Peer) -> Callable[[int], None]:
        def send_pli(media_ssrc: int) -> None:
            self._send_rtcp(peer, rtcp.pli(SFU_SSRC, media_ssrc))

        return send_pli

    def _sendto(self, data: bytes, addr: Addr) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def _send_rtcp(self, peer: Peer, packet: bytes) -> None:
        if peer.srtp is None or peer.addr is None or peer.closed:
            return
        peer.send(peer.srtp.tx.protect_rtcp(packet))

    def error_received(self, exc: Exception) -> None:
        self.drops["socket_error"] += 1  # e.g. ICMP port unreachable from a gone viewer

    # -- timers --------------------------------------------------------------------
    async def _run_timers(self) -> None:
        last_tick = self.now()
        while True:
            await asyncio.sleep(PACE_S if self._probing else TICK_S)
            started = self._busy_clock()
            try:
                now = self.now()
                if now - last_tick >= TICK_S - PACE_S / 2:
                    last_tick = now
                    self.tick(now)
                elif self._probing:
                    self._abr_pad(now)
            except Exception:
                log.exception("sfu timer failed")
            self.busy += self._busy_clock() - started

    def tick(self, now: float) -> None:
        if self.abr_peers:
            self._abr_tick(now)
        for room in self.rooms.values():
            if room.publisher is not None and room.publisher.twcc_in is not None:
                self._publisher_feedback(room.publisher)
        for peer in list(self.handshaking):
            if now - peer.created_at > self.settings.connect_timeout_s:
                self.close_peer(peer, "ICE/DTLS did not complete in time")
                continue
            timeout = peer.dtls.get_timeout()
            if timeout is not None and timeout <= 0 and peer.addr is not None:
                peer.dtls.handle_timeout()
                for out in peer.dtls.datagrams_to_send():
                    self._sendto(out, peer.addr)
        if now - self._last_second >= 1.0:
            self._last_second = now
            work = self._cpu_clock() if self._cpu_clock is not None else self.busy
            if self._cpu_mark is not None and now > self._cpu_mark[0]:
                self.load = (work - self._cpu_mark[1]) / (now - self._cpu_mark[0])
            self._cpu_mark = (now, work)
            for peer in list(self.peers.values()):
                if peer.ice.consent_expired(now, self.settings.consent_timeout_s):
                    self.close_peer(peer, "ICE consent expired")
                elif peer.role == "publisher" and peer.connected_at is not None:
                    if peer.rtp_in != peer.rtp_seen:
                        peer.rtp_seen, peer.media_at = peer.rtp_in, now
                    elif now - max(peer.media_at, peer.connected_at) > self.settings.idle_timeout_s:
                        self.close_peer(peer, "publisher sent no media")
            for room in self.rooms.values():
                for track in room.tracks.values():
                    track.tick(now)
                if room.publisher is not None:
                    self._receiver_reports(room.publisher, now)
                for viewer in room.viewers.values():
                    self._resend_budget(viewer, now)
        if now - self._last_sr >= self.settings.sr_interval_s:
            self._last_sr = now
            self._sender_reports(now)

    def _resend_budget(self, peer: Peer, now: float) -> None:
        """Once a second: the viewer's retransmission budget follows the rate (RTP
        packets on the wire, all its streams) delivered to it over the last second."""
        sent = sum(d.octets + d.packets * d.header_size() for _, d in peer.downtracks.values())
        t, before = peer.sent_mark
        if t and now > t:
            peer.resend.set_rate(8 * (sent - before) / (now - t))
        peer.sent_mark = (now, sent)

    def _abr_pad(self, now: float) -> None:
        """Probe padding for every adaptive viewer (media + padding at the probe's rate)."""
        probing = False
        for peer in self.abr_peers:
            abr, video = peer.abr, peer.video
            assert abr is not None and video is not None
            octets = sum(d.octets for _, d in peer.downtracks.values())
            media, peer.abr_octets = octets - peer.abr_octets, octets
            pad = abr.padding_bytes(now, media, now - peer.abr_tick)
            peer.abr_tick = now
            if pad:
                video[0].pad(video[1], pad, now)
            probing = probing or abr.probing(now)
        self._probing = probing

    def _abr_tick(self, now: float) -> None:
        """Per tick: probe padding; every DECIDE_S (every tick while a viewer's queue
        builds): each adaptive viewer's layer and tier."""
        self._abr_pad(now)
        due = now - self._last_decide >= DECIDE_S
        if due:
            self._last_decide = now
        for peer in self.abr_peers:
            abr, video = peer.abr, peer.video
            assert abr is not None and video is not None
            if not due and not abr.estimator.overusing:
                continue  # a queue is building: decide now, not at the next 0.5 s
            track, dt = video
            abr.on_sent(dt.packets - peer.abr_packets)
            peer.abr_packets = dt.packets
            tier = abr.tier
            # what the viewer's link carries on each layer: the video layer and the audio
            audio = peer.room.tracks.get("audio")
            extra = sum(audio.layer_bitrates()[:1]) if audio is not None else 0.0
            rates = track.layer_rates()
            decision = abr.decide(now, [rate + extra for _, rate in rates])
            if decision is None:
                continue
            # the policy counts the layers it was given; the forwarder wants their indices
            layer = rates[decision.layer][0] if 0 <= decision.layer < len(rates) else decision.layer
            track.set_abr_layer(dt, layer, now)
            if decision.tier is not tier:
                self._set_playout(peer)
            self._probing = self._probing or abr.probing(now)

    def _set_playout(self, peer: Peer) -> None:
        """Tell the viewer its tier's target delay (playout-delay extension: 0 … target)."""
        if peer.abr is None or not peer.playout_ext:
            return
        for _, dt in peer.downtracks.values():
            if dt.tw is not None:
                dt.set_playout_delay(peer.playout_ext, 0, peer.abr.tier.target_delay_ms)

    def _publisher_feedback(self, peer: Peer) -> None:
        """Every tick: transport-cc feedback for what the publisher sent since the last."""
        rx = peer.twcc_in
        if rx is None or peer.srtp is None:
            return
        # media SSRC: any of the publisher's (browsers ignore it); a layer's when known
        media = next(
            (
                layer.ssrc
                for track in peer.room.tracks.values()
                for layer in track.layers
                if layer is not None
            ),
            0,
        )
        for _ in range(twcc.WINDOW // twcc.MAX_PER_PACKET):
            packet = rx.feedback(SFU_SSRC, media)
            if packet is None:
                break
            self._send_rtcp(peer, packet)

    def _receiver_reports(self, peer: Peer, now: float) -> None:
        """Once a second, tell the publisher what arrived: browsers adapt on RR loss."""
        if peer.srtp is None:
            return
        blocks = []
        for track in peer.room.tracks.values():
            for layer in track.layers:
                if layer is None or layer.max_seq < 0:
                    continue
                fraction, lost, highest, lsr, dlsr = layer.report(now)
                blocks.append(
                    rtcp.RtcpReceiverInfo(
                        ssrc=layer.ssrc,
                        fraction_lost=fraction,
                        packets_lost=min(lost, 0x7FFFFF),
                        highest_sequence=highest & 0xFFFFFFFF,
                        jitter=0,
                        lsr=lsr,
                        dlsr=dlsr,
                    )
                )
        if blocks:
            self._send_rtcp(peer, rtcp.receiver_report(SFU_SSRC, blocks))

    def _sender_reports(self, now: float) -> None:
        wall = time.time()
        for peer in self.peers.values():
            if peer.role != "viewer" or peer.srtp is None:
                continue
            for _, dt in peer.downtracks.values():
                if dt.packets == 0 or dt.last_time < 0:
                    continue
                rtp_ts = dt.last_ts + int((now - dt.last_time) * dt.clock_rate)
                self._send_rtcp(
                    peer, rtcp.sender_report(dt.ssrc, wall, rtp_ts, dt.packets, dt.octets)
                )

    # -- figures -------------------------------------------------------------------
    def _layers(self) -> Iterator[Layer]:
        for room in self.rooms.values():
            for track in room.tracks.values():
                yield from (layer for layer in track.layers if layer is not None)

    def stats(self, viewers: bool = False) -> dict[str, object]:
        out = self._stats()
        out["adaptive_viewers"] = len(self.abr_peers)
        if viewers:
            out["now"] = self.now()
            out["viewers"] = [self.viewer_stats(p) for p in self.abr_peers]
        return out

    def viewer_stats(self, peer: Peer) -> dict[str, object]:
        """One adaptive viewer: estimate, layer, tier and switches (times on our clock)."""
        abr = peer.abr
        assert abr is not None and peer.video is not None
        now = self.now()
        dt = peer.video[1]
        est = abr.estimator
        switches = abr.policy.switches[-50:] if abr.policy is not None else []
        queue = est.queue_delay_ms()
        return {
            "id": peer.id,
            "addr": f"{peer.addr[0]}:{peer.addr[1]}" if peer.addr else None,
            "estimate_bps": round(est.estimate(now)),
            "delivered_bps": round(est.delivered_bps() or 0),
            "queue_ms": round(queue, 1) if queue is not None else None,
            "loss": round(est.loss, 4),
            "target_layer": abr.layer,
            "layer": dt.current,
            "user_max_layer": dt.max_layer,
            "tier": abr.tier.tier.value,
            "target_delay_ms": abr.tier.target_delay_ms,
            "switches": len(switches),
            "switch_log": [[round(t, 3), layer, why] for t, layer, why in switches],
            "probing": abr.probing(now),
            "probes": abr.probes,
            "failed_probes": abr.failed_probes,
            "frames": dt.frames,
            "padding_bytes": dt.padded,
            "publisher_padding_closed_up": dt.skipped,
            "rtx": bool(dt.rtx_ssrc),
            "rtt_ms": round(dt.rtt_s * 1000, 1) if dt.rtt_s else None,
            "nacks": peer.nacks.as_dict(),
            "retransmitted_bytes": sum(d.rtx_octets for _, d in peer.downtracks.values()),
        }

    def live_rooms(self) -> dict[str, dict[str, object]]:
        """Rooms with viewers or a connected publisher here: viewer count (media flowing)
        and, where the publisher is on this worker, how long it has been live."""
        now = self.now()
        out: dict[str, dict[str, object]] = {}
        for room in self.rooms.values():
            pub = room.publisher
            origin = pub is not None and not pub.closed and pub.connected_at is not None
            viewers = sum(1 for v in room.viewers.values() if v.srtp is not None)
            if origin or viewers:
                out[room.name] = {
                    "viewers": viewers,
                    "live_for_s": round(now - pub.connected_at, 1)
                    if origin and pub is not None and pub.connected_at is not None
                    else None,
                }
        return out

    def _stats(self) -> dict[str, object]:
        return {
            "udp_port": self.port,
            "rooms": len(self.rooms),
            "peers": len(self.peers),
            "load": round(self.load, 3),
            "viewers_connected": sum(
                1 for p in self.peers.values() if p.role == "viewer" and p.srtp is not None
            ),
            "delivered_packets": self.delivered,
            "keepalives": self.keepalives,
            # what publishers sent that never arrived (RR accounting, current rooms): a
            # viewer cannot get those back, whatever it NACKs
            "publisher_packets_lost": sum(layer.lost for layer in self._layers()),
            # padding-only packets publishers sent (their probes): never forwarded
            "publisher_padding_packets": sum(layer.padding for layer in self._layers()),
            "nacks": self.nack_stats().as_dict(),
            "retransmitted_bytes": self.retransmitted_left
            + sum(d.rtx_octets for p in self.peers.values() for _, d in p.downtracks.values()),
            "drops": dict(self.drops),
        }

    def nack_stats(self) -> NackStats:
        """What every viewer's NACKs asked for and got, since start."""
        total = NackStats()
        total.add(self.nack_totals)
        for peer in self.peers.values():
            total.add(peer.nacks)
        return total


def _connecting_keys(peer: Peer) -> list[str]:
    keys = []
    if peer.owner:
        keys.append("id:" + peer.owner)
    if peer.source:
        keys.append("ip:" + peer.source)
    return keys


def _check_room(name: str) -> None:
    if not valid_room(name):
        raise SessionError(400, f"invalid room name: {ROOM_RULE}")


def track_for(m: sdp.Media, request_keyframe: Callable[[int], None]) -> Track:
    """The forwarding track of one published media (from a publisher, or a relay)."""
    assert m.codec is not None
    return Track(
        m.kind,
        m.codec.mime,
        m.codec.clock_rate,
        rids=m.rids,
        rid_ext=m.rid_ext,
        request_keyframe=request_keyframe,
    )


def _describe(media: list[sdp.Media]) -> str:
    return ",".join(
        f"{m.kind}:{m.codec.mime if m.codec else '-'}{'/' + '|'.join(m.rids) if m.rids else ''}"
        for m in media
    )
