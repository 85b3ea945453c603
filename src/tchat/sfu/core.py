"""The SFU without I/O: every peer on one UDP port, rooms, their datagrams and timers.

`SfuCore` is driven from outside, the way aioquic drives a `QuicConnection`:
`receive_datagram(data, addr, now)` for each datagram, `handle_timer(now)` when
`get_timer()` is due; what it sends goes to the `send(data, addr)` callback given at
construction. A callback rather than a `datagrams_to_send()` queue because one
publisher packet fans out to thousands of viewers: each goes straight to the socket,
with no list of tuples built and drained per packet. `sfu/worker.py` is the asyncio
shell around it; a unit test drives it with a fake clock and no socket.

Datagrams are demultiplexed by their first byte (RFC 7983): STUN requests go to the
session whose ICE ufrag is in USERNAME, STUN responses, DTLS and SRTP/SRTCP to the
session that owns the source address (learnt from an authenticated STUN check). DTLS
is handled, and media sent, only with an address that answered our own check
(sfu/ice.py: a spoofed check must not aim a stream at a victim); DTLS arriving before
that is held. Anything else is dropped and counted in `drops`; nothing a peer sends can
raise out of `receive_datagram`. Sessions and admission are `SfuSessions`'
(sfu/sessions.py), one peer's state is `Peer`'s (sfu/peer.py), adaptive quality is the
allocator's (sfu/allocator.py), the RTCP we generate is sfu/reports.py's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pylibsrtp

from tchat.sfu import reports, rtcp
from tchat.sfu.dtls import DtlsState
from tchat.sfu.forwarder import Track
from tchat.sfu.ice import Addr, Keepalive, StunError, parse_request, parse_response
from tchat.sfu.peer import Peer, SendTo
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
from tchat.sfu.sessions import SfuSessions
from tchat.sfu.settings import SfuSettings

log = logging.getLogger("tchat.sfu")
TICK_S = 0.1
PACE_S = 0.02  # timer step while a bandwidth probe pads (paced, not 100 ms bursts)
STUN_BINDING_SUCCESS = b"\x01\x01"


class SfuCore(SfuSessions):
    def __init__(
        self,
        settings: SfuSettings,
        send: SendTo,
        clock: Callable[[], float] | None = None,
        cpu_clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, send, clock)
        self.wall = wall_clock  # Unix time: NTP in sender reports, RTT from receiver reports
        # The admission gate's load is the SFU's own work. In `tchat serve`'s process the
        # loop also serves HTTP and chat, whose floods must not refuse every WHIP: there it
        # is the time the shell spent in our datagram and timer handlers (`busy`). A
        # process that only runs the SFU (a cluster node) passes its CPU clock instead.
        self._cpu_clock = cpu_clock
        self.busy = 0.0  # seconds spent in the SFU's handlers (the shell adds them)
        self._cpu_mark: tuple[float, float] | None = None  # (now, work seconds) a second ago
        self.delivered = 0  # RTP packets sent to viewers (not counting NACK answers)
        self.keepalives = 0  # binding indications from a selected pair (libnice peers)
        self._last_tick = 0.0
        self._timer_at = 0.0
        self._last_second = 0.0
        self._last_sr = 0.0

    # -- datagrams -------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
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
                    self._rtcp(peer, data, addr, now)
                else:
                    self._rtp(peer, data, addr, now)
            elif first <= STUN_MAX:
                self._stun(data, addr, now)
            elif DTLS_MIN <= first <= DTLS_MAX:
                self._dtls(data, addr, now)
            else:
                self.drops["unknown_first_byte"] += 1
        except Exception:  # a peer's bytes must never stop the worker
            self.drops["error"] += 1
            log.debug("sfu datagram from %s raised", addr, exc_info=True)

    def _rtp(
        self, peer: Peer, data: bytes, addr: Addr | None = None, now: float | None = None
    ) -> None:
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
        if now is None:
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

    def feed(self, track: Track, rtp: bytes, now: float, layer: int) -> None:
        """RTP of a source other than a publisher here (a cluster edge's relay): forwarded
        to the track's viewers like a publisher's."""
        try:
            self.delivered += track.forward(rtp, now, layer)
        except ValueError:
            self.drops["relay_rtp_malformed"] += 1

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

    def _rtcp(
        self, peer: Peer, data: bytes, addr: Addr | None = None, now: float | None = None
    ) -> None:
        assert peer.srtp is not None
        try:
            plain = peer.srtp.rx.unprotect_rtcp(data)
        except pylibsrtp.Error:
            self.drops["srtcp_unprotect"] += 1
            return
        if now is None:
            now = self.now()
        if addr == peer.addr:
            peer.ice.heard(now)
        try:
            packets = rtcp.parse(plain)
        except ValueError:
            self.drops["rtcp_malformed"] += 1
            return
        peer.rtcp_in += 1
        if not self.allocator.on_rtcp(peer, plain, now):
            self.drops["twcc_malformed"] += 1
        if peer.role == "publisher":
            peer.publisher_rtcp(packets, now)
        else:
            peer.viewer_rtcp(packets, now, self.wall, self.allocator)

    def _stun(self, data: bytes, addr: Addr, now: float) -> None:
        if data[:2] == STUN_BINDING_SUCCESS:
            self._stun_response(data, addr, now)
            return
        try:
            msg, ufrag = parse_request(data)
            peer = self.by_ufrag.get(ufrag)
            if peer is None:
                raise StunError("unknown ufrag")
            owner = self.by_addr.get(addr)
            if owner is not None and owner is not peer:
                raise StunError("addr taken")
            replies = peer.ice.handle(msg, addr, now, len(data))
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
        peer.follow(addr, self.sender(addr))
        for reply in replies:
            self._send(reply, addr)

    def _stun_response(self, data: bytes, addr: Addr, now: float) -> None:
        """The answer to our check: `addr` receives what we send it (ice.py)."""
        peer = self.by_addr.get(addr)
        msg = parse_response(data)
        if peer is None or msg is None or not peer.ice.handle_response(msg, addr):
            self.drops["stun_response_unexpected"] += 1
            return
        peer.follow(addr, self.sender(addr))
        for held in peer.release(addr):
            self._dtls(held, addr, now)

    def _dtls(self, data: bytes, addr: Addr, now: float) -> None:
        peer = self.by_addr.get(addr)
        if peer is None:
            self.drops["dtls_unknown_peer"] += 1
            return
        if addr not in peer.ice.confirmed:
            if not peer.hold(addr, data):  # handled once addr answers our check
                self.drops["dtls_unconfirmed"] += 1
            return
        was = peer.dtls_received(data, addr, self.sender(addr))
        state = peer.dtls.state
        if state == DtlsState.CONNECTED and was == DtlsState.HANDSHAKE:
            self._connected(peer, now)
        elif state == DtlsState.FAILED:
            self.drops["dtls_failed"] += 1
            self.close_peer(peer, peer.dtls.error, resumable=True)
        elif state == DtlsState.CLOSED:
            self.close_peer(peer, "peer closed DTLS")

    def _connected(self, peer: Peer, now: float) -> None:
        self._handshake_over(peer)
        peer.srtp = peer.dtls.srtp
        peer.connected_at = now
        self.connect_times.append(now - peer.created_at)
        if len(self.connect_times) > 100_000:
            del self.connect_times[:50_000]
        if peer.role == "viewer":
            pairs = peer.open_downtracks()
            # adaptive viewers: TWCC, starting layer, playout delay, before media flows
            self.allocator.connect(peer, pairs, now)
            for _, track, dt in pairs:
                track.add(dt, now)
        else:
            self._notify(peer, True)
            peer.resumes = None  # told (the recording follows it): no chain of old peers
        log.debug(
            "sfu connected peer=%s role=%s in %.3fs", peer.id, peer.role, now - peer.created_at
        )

    # -- timers ----------------------------------------------------------------------
    def start_timer(self, now: float) -> None:
        self._last_tick = now
        self._timer_at = now + TICK_S

    def get_timer(self) -> float:
        """When `handle_timer` is next due: a tick every TICK_S, PACE_S while a probe pads."""
        return self._timer_at

    def handle_timer(self, now: float) -> None:
        try:
            if now - self._last_tick >= TICK_S - PACE_S / 2:
                self._last_tick = now
                self.tick(now)
            elif self.allocator.probing:
                self.allocator.pad(now)
        finally:  # a failing tick must not make the timer spin
            self._timer_at = now + (PACE_S if self.allocator.probing else TICK_S)

    def tick(self, now: float) -> None:
        self.allocator.tick(now)
        for room in self.rooms.values():
            pub = room.publisher
            if pub is not None and pub.twcc_in is not None and pub.srtp is not None:
                # transport-cc feedback for what the publisher sent since the last tick
                for packet in reports.publisher_feedback(pub.twcc_in, room.tracks.values()):
                    pub.send_rtcp(packet)
        for peer in list(self.handshaking):
            if now - peer.created_at > self.settings.connect_timeout_s:
                self.close_peer(peer, "ICE/DTLS did not complete in time", resumable=True)
                continue
            peer.dtls_timer(self._send)
        if now - self._last_second >= 1.0:
            self._last_second = now
            self._each_second(now)
        if now - self._last_sr >= self.settings.sr_interval_s:
            self._last_sr = now
            wall = self.wall()
            for peer in self.peers.values():
                if peer.role != "viewer" or peer.srtp is None:
                    continue
                downtracks = (dt for _, dt in peer.downtracks.values())
                for packet in reports.sender_reports(downtracks, now, wall):
                    peer.send_rtcp(packet)

    def _each_second(self, now: float) -> None:
        work = self._cpu_clock() if self._cpu_clock is not None else self.busy
        if self._cpu_mark is not None and now > self._cpu_mark[0]:
            self.load = (work - self._cpu_mark[1]) / (now - self._cpu_mark[0])
        self._cpu_mark = (now, work)
        self.end_lost(now)
        for peer in list(self.peers.values()):
            if peer.ice.consent_expired(now, self.settings.consent_timeout_s):
                self.close_peer(peer, "ICE consent expired", resumable=True)
            elif peer.role == "publisher" and peer.connected_at is not None:
                if peer.media_stalled(now, self.settings.idle_timeout_s):
                    self.close_peer(peer, "publisher sent no media", resumable=True)
        for room in self.rooms.values():
            for track in room.tracks.values():
                track.tick(now)
            if room.publisher is not None and room.publisher.srtp is not None:
                # what arrived: browsers adapt on RR loss
                packet = reports.receiver_report(room.tracks.values(), now)
                if packet is not None:
                    room.publisher.send_rtcp(packet)
            for viewer in room.viewers.values():
                viewer.update_resend_budget(now)

    # -- figures ---------------------------------------------------------------------
    def stats(self, viewers: bool = False) -> dict[str, object]:
        out = self._stats()
        out["delivered_packets"] = self.delivered
        out["keepalives"] = self.keepalives
        out["adaptive_viewers"] = len(self.allocator.active)
        if viewers:
            now = out["now"] = self.now()
            out["viewers"] = [self.allocator.viewer_stats(p, now) for p in self.allocator.active]
        return out
