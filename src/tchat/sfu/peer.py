"""One WebRTC peer of the SFU: its ICE/DTLS/SRTP state and the RTCP it sends us.

A `Peer` is a WHIP publisher or a WHEP viewer in a `Room`. It owns its ICE-lite agent,
its DTLS endpoint (and the SRTP keys that come out of it), the address media goes to,
and, for a viewer, its downtracks. Every method here is about that one peer; finding
the peer a datagram belongs to, admission and timers are the core's (sfu/core.py). No
method reads a clock or a socket: `now` and `sendto` are passed in.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tchat.sfu import rtcp, sdp, twcc
from tchat.sfu.dtls import DtlsEndpoint, DtlsState, SrtpSessions
from tchat.sfu.fastpath import downtrack
from tchat.sfu.forwarder import (
    HIGH,
    NACK_MAX,
    DownTrack,
    NackStats,
    RetransmitBudget,
    Track,
)
from tchat.sfu.ice import Addr, IceLite
from tchat.sfu.tcp import is_tcp

Role = Literal["publisher", "viewer"]
SendTo = Callable[[bytes, Addr], None]
Pair = tuple[Track, DownTrack]
MAX_HELD_DTLS = 8  # a client's first flight is 1-2 datagrams
MAX_HELD_BYTES = 2048  # of a datagram held (DTLS records fit the path MTU)


class ViewerFeedback(Protocol):
    """Where a viewer's receiver reports and NACKs go besides the forwarder (the stream
    allocator, sfu/allocator.py)."""

    def on_receiver_report(
        self, peer: Peer, pair: Pair, now: float, fraction_lost: int
    ) -> None: ...

    def on_nack(self, peer: Peer, pair: Pair, lost: int) -> None: ...


def _nowhere(data: bytes) -> None:
    pass


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
    downtracks: dict[int, Pair] = field(default_factory=dict)  # viewer
    # DTLS from an address not confirmed yet (a handshake overtaking our check's answer)
    held: list[tuple[Addr, bytes]] = field(default_factory=list)
    rtp_in: int = 0
    media_at: float = 0.0  # when rtp_in last grew, checked once a second (publishers)
    rtp_seen: int = 0
    rtcp_in: int = 0
    # viewer: retransmissions (NACK answers) allowed per second, and what NACKs asked
    resend: RetransmitBudget = field(default_factory=RetransmitBudget)
    nacks: NackStats = field(default_factory=NackStats)
    sent_mark: tuple[float, int] = (0.0, 0)  # (time, bytes sent) at the last second
    resumes: Peer | None = None  # publisher: the lost one whose stream this one continues
    udp_fd: int = -1  # the SFU's UDP socket, which the native fan-out sends by

    def connecting_keys(self) -> list[str]:
        return connecting_keys(self.owner, self.source)

    # -- ICE: where media goes ------------------------------------------------------------
    def select(self, addr: Addr, sendto: SendTo) -> None:
        self.addr = addr
        self.send = lambda data: sendto(data, addr)
        for _, dt in self.downtracks.values():
            self._route(dt)

    def unselect(self) -> None:
        """The selected address is gone (a TCP connection closed): send nothing."""
        self.addr = None
        self.send = _nowhere
        for _, dt in self.downtracks.values():
            self._route(dt)

    def _route(self, dt: DownTrack) -> None:
        """`dt` sends where this peer does; the native fan-out by the UDP socket itself
        when the address is a UDP one (a TCP link's framing stays in Python)."""
        addr = self.addr
        udp = addr is not None and not is_tcp(addr)
        dt.route(self.udp_fd if udp else -1, addr, self.send)

    def follow(self, addr: Addr, sendto: SendTo) -> None:
        """Media goes to the nominated address once it is confirmed; until then it stays
        where it was."""
        if self.ice.nominated == addr and self.addr != addr and addr in self.ice.confirmed:
            self.select(addr, sendto)

    # -- DTLS --------------------------------------------------------------------------
    def hold(self, addr: Addr, data: bytes) -> bool:
        """Keep DTLS from an address not confirmed yet, to handle once it answers our
        check; False when it is dropped instead (too many, too large)."""
        if len(self.held) < MAX_HELD_DTLS and len(data) <= MAX_HELD_BYTES:
            self.held.append((addr, data))
            return True
        return False

    def release(self, addr: Addr) -> list[bytes]:
        """The DTLS held for `addr`, now confirmed."""
        held = [d for a, d in self.held if a == addr]
        self.held = [(a, d) for a, d in self.held if a != addr]
        return held

    def dtls_received(self, data: bytes, addr: Addr, sendto: SendTo) -> DtlsState:
        """Feed a DTLS record from a confirmed address; the state before it."""
        if self.addr is None:
            self.select(addr, sendto)  # DTLS may overtake the nominating check
        was = self.dtls.state
        self.dtls.receive(data)
        for out in self.dtls.datagrams_to_send():
            sendto(out, addr)
        return was

    def dtls_timer(self, sendto: SendTo) -> None:
        """Retransmit the handshake flight when its timer is due."""
        timeout = self.dtls.get_timeout()
        if timeout is not None and timeout <= 0 and self.addr is not None:
            self.dtls.handle_timeout()
            for out in self.dtls.datagrams_to_send():
                sendto(out, self.addr)

    def close_dtls(self, sendto: SendTo) -> None:
        """close_notify, so a peer we end learns it at once (not at its consent timeout)."""
        if self.dtls.state == DtlsState.CONNECTED and self.addr is not None:
            self.dtls.close()
            for data in self.dtls.datagrams_to_send():
                sendto(data, self.addr)

    def send_rtcp(self, packet: bytes) -> None:
        if self.srtp is None or self.addr is None or self.closed:
            return
        self.send(self.srtp.tx.protect_rtcp(packet))

    # -- a viewer's media ----------------------------------------------------------------
    def open_downtracks(self) -> list[tuple[sdp.Media, Track, DownTrack]]:
        """One downtrack per negotiated media the room has, numbered from random points;
        not yet added to its track."""
        assert self.srtp is not None
        pairs = []
        for m in self.media:
            track = self.room.tracks.get(m.kind)
            if m.codec is None or track is None:
                continue
            dt = self._new_downtrack(m.ssrc, m.codec.payload_type, m.codec.clock_rate)
            dt.nack_stats = self.nacks  # one tally per viewer
            if m.rtx_pt and m.rtx_ssrc:
                dt.enable_rtx(m.rtx_ssrc, m.rtx_pt, secrets.randbits(16))
            self.downtracks[m.ssrc] = (track, dt)
            pairs.append((m, track, dt))
        return pairs

    def _new_downtrack(self, ssrc: int, pt: int, clock_rate: int) -> DownTrack:
        assert self.srtp is not None
        first = secrets.randbits(16), secrets.randbits(32)
        dt = downtrack(self.srtp.tx, ssrc, pt, clock_rate, self.send, self.max_layer, *first)
        self._route(dt)
        return dt

    def update_resend_budget(self, now: float) -> None:
        """Once a second: the viewer's retransmission budget follows the rate (RTP
        packets on the wire, all its streams) delivered to it over the last second."""
        sent = sum(d.octets + d.packets * d.header_size() for _, d in self.downtracks.values())
        t, before = self.sent_mark
        if t and now > t:
            self.resend.set_rate(8 * (sent - before) / (now - t))
        self.sent_mark = (now, sent)

    # -- a publisher's media -------------------------------------------------------------
    def media_stalled(self, now: float, idle_timeout_s: float) -> bool:
        """Once a second: has a connected publisher sent no RTP for `idle_timeout_s`?"""
        if self.rtp_in != self.rtp_seen:
            self.rtp_seen, self.media_at = self.rtp_in, now
            return False
        assert self.connected_at is not None
        return now - max(self.media_at, self.connected_at) > idle_timeout_s

    # -- RTCP in -------------------------------------------------------------------------
    def publisher_rtcp(self, packets: list[object], now: float) -> None:
        """Keep each stream's last SR, so our receiver reports let it measure RTT."""
        for pkt in packets:
            if isinstance(pkt, rtcp.RtcpSrPacket):
                for track in self.room.tracks.values():
                    layer = track.by_ssrc.get(pkt.ssrc)
                    if layer is not None:
                        layer.sr_ntp_mid = (pkt.sender_info.ntp_timestamp >> 16) & 0xFFFFFFFF
                        layer.sr_arrival = now

    def viewer_rtcp(
        self,
        packets: list[object],
        now: float,
        wall: Callable[[], float],
        feedback: ViewerFeedback,
    ) -> None:
        """Receiver reports (loss, RTT), NACKs (resend within budget), PLI/FIR."""
        resend = NACK_MAX  # retransmissions this datagram may cause, all NACKs together
        for pkt in packets:
            if isinstance(pkt, rtcp.RtcpRrPacket | rtcp.RtcpSrPacket):
                for report in pkt.reports:
                    pair = self.downtracks.get(report.ssrc)
                    if pair is not None:
                        dt = pair[1]
                        dt.fraction_lost = report.fraction_lost
                        dt.rr_lost = report.packets_lost
                        dt.jitter = report.jitter
                        if report.lsr:
                            dt.rtt_s = rtcp.round_trip_s(wall(), report.lsr, report.dlsr)
                        feedback.on_receiver_report(self, pair, now, report.fraction_lost)
            elif isinstance(pkt, rtcp.RtcpRtpfbPacket) and pkt.fmt == rtcp.RTPFB_NACK:
                pair = self.downtracks.get(pkt.media_ssrc)
                if pair is not None:
                    resend -= pair[0].nack(pair[1], pkt.lost, now, self.resend, max(0, resend))
                    feedback.on_nack(self, pair, len(pkt.lost))
            elif isinstance(pkt, rtcp.RtcpPsfbPacket) and pkt.fmt in (rtcp.PSFB_PLI, rtcp.PSFB_FIR):
                pair = self.downtracks.get(pkt.media_ssrc)
                if pair is None and pkt.fmt == rtcp.PSFB_FIR and len(pkt.fci) >= 4:
                    pair = self.downtracks.get(int.from_bytes(pkt.fci[:4], "big"))
                if pair is not None:
                    pair[0].keyframe_wanted(pair[1], now)


@dataclass(eq=False)
class Room:
    name: str
    publisher: Peer | None = None
    tracks: dict[str, Track] = field(default_factory=dict)
    viewers: dict[str, Peer] = field(default_factory=dict)
    # the media of a source other than a publisher here (a cluster edge's relay), which
    # feeds `tracks` through SfuCore.feed; viewers join it as they join a publisher's
    source_media: list[sdp.Media] | None = None
    # a publisher lost without a DELETE: the room waits for it until `grace_until`
    # (tracks and viewers kept; a new publish of the room resumes them)
    lost: Peer | None = None
    grace_until: float = 0.0

    def media(self) -> list[sdp.Media] | None:
        """What a viewer of this room receives, or None when nothing is live."""
        pub = self.publisher
        if pub is not None and not pub.closed:
            return pub.media
        if self.lost is not None:
            return self.lost.media  # viewers may join a room that waits for its publisher
        return self.source_media


def connecting_keys(owner: str, source: str) -> list[str]:
    """The admission counters a connecting session (or one waiting to connect) holds:
    its token identity, its client address."""
    keys = []
    if owner:
        keys.append("id:" + owner)
    if source:
        keys.append("ip:" + source)
    return keys


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
