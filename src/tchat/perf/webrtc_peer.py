"""Lightweight real WebRTC endpoints for tests and the load generator.

`ClientPeer` does what a browser does on the wire, minus codecs: it is the full,
controlling ICE agent (binding requests with USE-CANDIDATE and consent checks, and
answers to the SFU's checks),
the DTLS client, and an SRTP endpoint that sends receiver reports. As a viewer it
counts RTP packets from their clear-text headers (bulk) or also decrypts them and
checks sequence continuity and payload integrity (sampled); as a publisher it
protects and sends prepared RTP packets. One UDP socket per peer, as a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pylibsrtp
from aioice import stun
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtp import RtcpPsfbPacket, RtcpReceiverInfo, RtcpRrPacket
from aiortc.sdp import SessionDescription
from OpenSSL import SSL

from tchat.sfu import rtcp, twcc
from tchat.sfu.dtls import DtlsEndpoint, DtlsState, fingerprint, make_context
from tchat.sfu.rtp import (
    RtpError,
    h264_keyframe_start,
    header_extension,
    is_rtcp,
    payload_bounds,
)
from tchat.sfu.sdp import PLAYOUT_DELAY_URI, TWCC_URI
from tchat.sfu.sdpfrag import parse_fragment

MID_EXT, RID_EXT = 4, 10
TWCC_EXT, PLAYOUT_EXT = 5, 6
RTX_PT = 103  # the RTX payload type a viewer offer (rtx=True) names for H.264
CONSENT_INTERVAL_S = 5.0
RR_INTERVAL_S = 1.0
TWCC_INTERVAL_S = 0.1  # Chrome sends transport-cc feedback about this often


@dataclass
class Identity:
    """Certificate and DTLS context shared by the peers of one process."""

    cert: RTCCertificate
    ctx: SSL.Context
    fingerprint: str

    @classmethod
    def create(cls) -> Identity:
        cert = RTCCertificate.generateCertificate()
        return cls(cert, make_context(cert), fingerprint(cert))


def viewer_offer(ufrag: str, pwd: str, fp: str, adaptive: bool = False, rtx: bool = False) -> str:
    """A recvonly audio+video offer as a browser makes it (Opus; H.264 pm=1, VP8).

    `adaptive` also offers what Chrome offers for congestion control: the transport-wide
    CC extension with `transport-cc` feedback, and the playout-delay extension; `rtx`
    offers RTX (RFC 4588) for H.264 as payload type RTX_PT."""
    ext = fb_a = fb_v = ""
    rtx_pt = f" {RTX_PT}" if rtx else ""
    rtx_lines = f"a=rtpmap:{RTX_PT} rtx/90000\r\na=fmtp:{RTX_PT} apt=102\r\n" if rtx else ""
    if adaptive:
        ext = f"a=extmap:{TWCC_EXT} {TWCC_URI}\r\na=extmap:{PLAYOUT_EXT} {PLAYOUT_DELAY_URI}\r\n"
        fb_a, fb_v = "a=rtcp-fb:111 transport-cc\r\n", "a=rtcp-fb:102 transport-cc\r\n"
    return (
        f"v=0\r\no=- {secrets.randbits(48)} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        f"a=group:BUNDLE 0 1\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"
        f"a=fingerprint:sha-256 {fp}\r\na=setup:actpass\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n"
        f"a=rtcp-mux\r\n{ext}a=rtpmap:111 opus/48000/2\r\n{fb_a}"
        f"m=video 9 UDP/TLS/RTP/SAVPF 102 96{rtx_pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
        f"a=recvonly\r\na=rtcp-mux\r\n{ext}a=rtpmap:102 H264/90000\r\n"
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
        f"a=rtcp-fb:102 nack\r\na=rtcp-fb:102 nack pli\r\n{fb_v}a=rtpmap:96 VP8/90000\r\n"
        f"{rtx_lines}"
    )


def publisher_offer(ufrag: str, pwd: str, fp: str, rids: list[str]) -> str:
    """A sendonly Opus + H.264 offer with simulcast `rids` (highest first), like OBS/Chrome."""
    sim = ""
    if rids:
        sim = "".join(f"a=rid:{r} send\r\n" for r in rids)
        sim += "a=simulcast:send " + ";".join(rids) + "\r\n"
    return (
        f"v=0\r\no=- {secrets.randbits(48)} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        f"a=group:BUNDLE 0 1\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"
        f"a=fingerprint:sha-256 {fp}\r\na=setup:actpass\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n"
        "a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n"
        f"a=rtcp-mux\r\na=extmap:{MID_EXT} urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        f"a=extmap:{RID_EXT} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
        "a=rtpmap:102 H264/90000\r\n"
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
        "a=rtcp-fb:102 nack\r\na=rtcp-fb:102 nack pli\r\n" + sim
    )


@dataclass
class StreamStats:
    """What a viewer saw of one SSRC."""

    first_seq: int = -1
    max_ext_seq: int = -1  # extended (with wrap count) highest sequence number
    received: int = 0
    octets: int = 0
    gaps: int = 0  # sampled: jumps forward by more than one
    reordered: int = 0
    bad_payloads: int = 0  # sampled: payload not one the publisher sent
    payloads: int = 0
    keyframe_first: bool | None = None  # sampled: did the video start on a keyframe

    def expected(self) -> int:
        return 0 if self.first_seq < 0 else self.max_ext_seq - self.first_seq + 1

    def lost(self) -> int:
        return max(0, self.expected() - self.received)


@dataclass
class PeerStats:
    started: float = 0.0  # WHEP/WHIP POST sent (monotonic)
    connected: float = 0.0  # DTLS done
    first_media: float = 0.0  # first RTP packet
    streams: dict[int, StreamStats] = field(default_factory=dict)
    plis: int = 0
    padding: int = 0  # padding-only packets (bandwidth probes) received
    rtcp_in: int = 0
    decrypt_errors: int = 0


class ClientPeer(asyncio.DatagramProtocol):
    def __init__(
        self,
        identity: Identity,
        decrypt: bool = False,
        known_payloads: set[int] | None = None,
        keyframe_test: Callable[[bytes], bool] | None = None,
        on_pli: Callable[[int], None] | None = None,
        keep_packets: bool = False,
        lose: Callable[[bytes], bool] | None = None,
        adaptive: bool = False,
        on_media: Callable[[int, int, bool, bytes, float], None] | None = None,
        rtx: bool = False,
    ) -> None:
        self.identity = identity
        self.ufrag = secrets.token_hex(4)
        self.pwd = secrets.token_hex(16)
        self.decrypt = decrypt
        self.known_payloads = known_payloads
        self.keyframe_test = keyframe_test
        self.on_pli = on_pli
        # decrypted (ssrc, seq, payload) in arrival order, for tests that inspect the stream
        self.packets: list[tuple[int, int, bytes]] | None = [] if keep_packets else None
        self.lose = lose  # simulated network loss: True drops an RTP datagram on arrival
        self.stats = PeerStats()
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self._remote_ufrag = ""
        self._remote_pwd = ""
        self._tiebreaker = secrets.randbits(63)
        self._stun_ok: asyncio.Future[None] | None = None
        self._dtls_ok: asyncio.Future[None] | None = None
        self.dtls: DtlsEndpoint | None = None
        self.tx: pylibsrtp.Session | None = None
        self.rx: pylibsrtp.Session | None = None
        self.rx_key = b""  # its key and libsrtp profile: a native reader decrypts alike
        self.rx_profile = 0
        self._timer: asyncio.Task[None] | None = None
        self._ssrc = secrets.randbits(32) | 1
        self.closed = False
        self.media_started = asyncio.Event()
        # adaptive viewers: transport-wide CC feedback from arrival times, playout delay
        self.adaptive = adaptive
        self.rtx = rtx  # offer RTX: NACK answers arrive as RTX (another SSRC, OSN first)
        self.answer = ""  # the SDP answer connect() was given
        # (ssrc, extended seq, marker, payload, arrival time.time()), after decrypting
        self.on_media = on_media
        self.playout_max_ms: int | None = None
        self._tw_arrivals: dict[int, float] = {}  # extended transport seq → arrival (s)
        self._tw_max = -1
        self._tw_next = -1  # first sequence number not yet reported
        self._tw_count = 0
        self._tw_task: asyncio.Task[None] | None = None
        self.swarm: Any = None  # the native reader our socket was handed to, if any
        self._swarm_key = -1

    # -- setup ---------------------------------------------------------------------
    async def open(self, host: str = "127.0.0.1", own_socket: bool = False) -> None:
        """Bind our UDP socket. `own_socket`: read it with an event-loop reader instead of
        a transport, so that it can be handed to a native `Swarm` later (`hand_off`):
        uvloop's datagram transports cannot stop reading."""
        loop = asyncio.get_running_loop()
        if own_socket:
            self.connection_made(OwnSocket(host, loop, self))  # type: ignore[arg-type]
            return
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))

    def hand_off(self, swarm: Any) -> None:
        """From now on a native `tchat_fastpath.Swarm` reads our socket with recvmmsg: it
        counts what `_rtp` counts and, for a decrypting (sampled) viewer, decrypts and
        checks as `_rtp` does, going on from the figures and sequence numbers counted
        here; `sync` brings them back. Python keeps sending (reports, consent checks)."""
        own = self.transport
        assert isinstance(own, OwnSocket) and self.swarm is None
        assert self.lose is None and self.on_media is None and self.packets is None
        own.stop_reading()
        st = self.stats
        sampled = None
        if self.decrypt:
            assert self.rx_key and self.keyframe_test is h264_keyframe_start
            sampled = (self.rx_key, self.rx_profile, st.decrypt_errors, st.padding)
        rows = [_row(ssrc, s) for ssrc, s in st.streams.items()]
        self._swarm_key = swarm.add(own.sock.fileno(), rows, st.rtcp_in, sampled)
        self.swarm = swarm

    def sync(self, final: bool = False) -> None:
        """The native reader's figures into `stats` (`final`: and stop it reading)."""
        if self.swarm is None:
            return
        get = self.swarm.remove if final else self.swarm.stats
        rows, self.stats.rtcp_in, errors, padding = get(self._swarm_key)
        if self.decrypt:
            self.stats.decrypt_errors, self.stats.padding = errors, padding
        for ssrc, *figures in rows:
            s = self.stats.streams.setdefault(ssrc, StreamStats())
            (s.first_seq, s.max_ext_seq, s.received, s.octets, s.gaps, s.reordered,
             s.bad_payloads, s.payloads, keyframe_first) = figures  # fmt: skip
            s.keyframe_first = None if keyframe_first < 0 else bool(keyframe_first)
        if final:
            self.swarm = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def offer(self, rids: list[str] | None = None, publish: bool = False) -> str:
        fp = self.identity.fingerprint
        if publish:
            return publisher_offer(self.ufrag, self.pwd, fp, rids or [])
        return viewer_offer(self.ufrag, self.pwd, fp, adaptive=self.adaptive, rtx=self.rtx)

    async def connect(self, answer: str, timeout_s: float = 10.0) -> None:
        """ICE (one nominating check, retried) then the DTLS handshake, as the client."""
        self.answer = answer
        desc = SessionDescription.parse(answer)
        media = desc.media[0]
        assert media.ice is not None and media.dtls is not None
        self._remote_ufrag = str(media.ice.usernameFragment)
        self._remote_pwd = str(media.ice.password)
        cand = next(c for c in media.ice_candidates if c.protocol.lower() == "udp")
        self.remote = (cand.ip, cand.port)
        fps = [(f.algorithm.lower(), f.value) for f in media.dtls.fingerprints]
        loop = asyncio.get_running_loop()
        self._dtls_ok = loop.create_future()
        deadline = loop.time() + timeout_s
        await self._nominate(deadline)
        self.dtls = DtlsEndpoint(self.identity.ctx, server=False, remote_fingerprints=fps)
        self.dtls.start()
        self._flush_dtls()
        while not self._dtls_ok.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._dtls_ok), 0.2)
            except TimeoutError:
                if loop.time() > deadline:
                    raise TimeoutError("DTLS handshake did not finish") from None
                timeout = self.dtls.get_timeout()
                if timeout is not None and timeout <= 0:
                    self.dtls.handle_timeout()
                    self._flush_dtls()
        self._dtls_ok.result()
        self.stats.connected = time.monotonic()
        self._timer = asyncio.create_task(self._periodic())
        if self.adaptive:
            self._tw_task = asyncio.create_task(self._twcc_loop())

    async def _nominate(self, deadline: float) -> None:
        """Our nominating check, retried with backoff until the SFU answers it."""
        loop = asyncio.get_running_loop()
        self._stun_ok = ok = loop.create_future()
        delay = 0.1
        while not ok.done():
            self._send_check()
            try:
                await asyncio.wait_for(asyncio.shield(ok), delay)
            except TimeoutError:
                delay = min(delay * 2, 1.0)
                if loop.time() > deadline:
                    raise TimeoutError("ICE check got no answer") from None

    def restart_fragment(self) -> str:
        """New ICE credentials (an ICE restart, RFC 8445 §9): the body of a WHIP/WHEP
        PATCH (application/trickle-ice-sdpfrag)."""
        self.ufrag, self.pwd = secrets.token_hex(4), secrets.token_hex(16)
        return f"a=ice-ufrag:{self.ufrag}\r\na=ice-pwd:{self.pwd}\r\n"

    async def move(self, answer: str, host: str = "127.0.0.1", timeout_s: float = 10.0) -> None:
        """Take up the SFU's answer to our restart from a new local address, as a phone
        that changed networks: a new socket nominates until the SFU answers, the old one
        is closed. DTLS and SRTP go on."""
        ours = parse_fragment(answer)
        assert ours.ufrag is not None and ours.pwd is not None
        old = self.transport
        await self.open(host)  # connection_made: self.transport is the new socket
        if old is not None:
            old.close()
        self._remote_ufrag, self._remote_pwd = ours.ufrag, ours.pwd
        await self._nominate(asyncio.get_running_loop().time() + timeout_s)

    def _send_check(self) -> None:
        msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        msg.attributes["USERNAME"] = f"{self._remote_ufrag}:{self.ufrag}"
        msg.attributes["PRIORITY"] = 1853824767
        msg.attributes["ICE-CONTROLLING"] = self._tiebreaker
        msg.attributes["USE-CANDIDATE"] = None
        msg.add_message_integrity(self._remote_pwd.encode())
        self._send(bytes(msg))

    def _answer_check(self, msg: stun.Message, addr: tuple[str, int]) -> None:
        """Answer the SFU's connectivity check, as browsers do: it sends media only to an
        address that answered one."""
        if (
            msg.message_method != stun.Method.BINDING
            or msg.attributes.get("USERNAME") != f"{self.ufrag}:{self._remote_ufrag}"
            or not msg.check_message_integrity(self.pwd.encode())
        ):
            return
        resp = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, msg.transaction_id)
        resp.attributes["XOR-MAPPED-ADDRESS"] = addr
        resp.add_message_integrity(self.pwd.encode())
        if self.transport is not None and not self.closed:
            self.transport.sendto(bytes(resp), addr)

    def _send(self, data: bytes) -> None:
        if self.transport is not None and self.remote is not None and not self.closed:
            self.transport.sendto(data, self.remote)

    def _flush_dtls(self) -> None:
        assert self.dtls is not None
        for d in self.dtls.datagrams_to_send():
            self._send(d)

    async def _periodic(self) -> None:
        next_consent = time.monotonic() + CONSENT_INTERVAL_S
        while not self.closed:
            await asyncio.sleep(RR_INTERVAL_S)
            self.send_receiver_report()
            if time.monotonic() >= next_consent:
                next_consent += CONSENT_INTERVAL_S
                self._send_check()

    async def _twcc_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(TWCC_INTERVAL_S)
            self.send_twcc_feedback()

    def send_twcc_feedback(self) -> None:
        """Report every transport-wide sequence number since the last report."""
        if self.tx is None or self._tw_max < 0 or self._tw_next > self._tw_max:
            return
        start = self._tw_next if self._tw_next >= 0 else min(self._tw_arrivals)
        start = max(start, self._tw_max - 0xFFFE)
        arrivals = [self._tw_arrivals.pop(n, None) for n in range(start, self._tw_max + 1)]
        self._tw_arrivals.clear()  # anything older arrived too late to report
        self._tw_next = self._tw_max + 1
        if all(a is None for a in arrivals):
            return
        media = next(iter(self.stats.streams), 0)
        packet = twcc.build(self._ssrc, media, start, self._tw_count, arrivals)
        self._tw_count += 1
        self._send(self.tx.protect_rtcp(packet))

    def _note_transport_seq(self, data: bytes, arrival: float) -> None:
        value = header_extension(data, TWCC_EXT)
        if value is None or len(value) < 2:
            return
        seq = (value[0] << 8) | value[1]
        if self._tw_max < 0:
            ext = seq
        else:
            delta = (seq - (self._tw_max & 0xFFFF)) & 0xFFFF
            ext = self._tw_max + delta if delta < 0x8000 else self._tw_max + delta - 0x10000
        if ext < self._tw_next:
            return  # already reported as lost
        self._tw_arrivals[ext] = arrival
        self._tw_max = max(self._tw_max, ext)
        delay = header_extension(data, PLAYOUT_EXT)
        if delay is not None and len(delay) == 3:
            self.playout_max_ms = 10 * (int.from_bytes(delay, "big") & 0xFFF)

    # -- receive -------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        first = data[0] if data else 255
        if 128 <= first <= 191:
            if is_rtcp(data):
                self._rtcp(data)
            else:
                self._rtp(data)
        elif first <= 3:
            try:
                msg = stun.parse_message(data)
            except ValueError:
                return
            if msg.message_class == stun.Class.REQUEST:
                self._answer_check(msg, addr)
            elif (
                msg.message_class == stun.Class.RESPONSE
                and msg.check_message_integrity(self._remote_pwd.encode())
                and self._stun_ok is not None
                and not self._stun_ok.done()
            ):
                self._stun_ok.set_result(None)
        elif 20 <= first <= 63 and self.dtls is not None:
            self.dtls.receive(data)
            self._flush_dtls()
            if self._dtls_ok is not None and not self._dtls_ok.done():
                if self.dtls.state == DtlsState.CONNECTED:
                    assert self.dtls.srtp is not None
                    tx = self.dtls.srtp.tx
                    assert isinstance(tx, pylibsrtp.Session)  # a client's: never native
                    self.tx, self.rx = tx, self.dtls.srtp.rx
                    self.rx_key = self.dtls.srtp.rx_key  # what `rx` was made from
                    self.rx_profile = self.dtls.srtp.libsrtp_profile
                    self._dtls_ok.set_result(None)
                elif self.dtls.state == DtlsState.FAILED:
                    self._dtls_ok.set_exception(ConnectionError(self.dtls.error))

    def _rtp(self, data: bytes) -> None:
        if len(data) < 12 or (self.lose is not None and self.lose(data)):
            return
        if self.adaptive:
            self._note_transport_seq(data, time.monotonic())
        st = self.stats
        if not st.first_media:
            self._first_media()
        ssrc = int.from_bytes(data[8:12], "big")
        s = st.streams.get(ssrc)
        if s is None:
            s = st.streams[ssrc] = StreamStats()
        seq = (data[2] << 8) | data[3]
        if s.first_seq < 0:
            s.first_seq = s.max_ext_seq = seq
            ext = seq
        else:
            # extend against the highest seen: nearest in the 16-bit circle
            base = s.max_ext_seq
            delta = (seq - (base & 0xFFFF)) & 0xFFFF
            ext = base + delta if delta < 0x8000 else base + delta - 0x10000
        s.received += 1
        s.octets += len(data)
        if self.decrypt and self.rx is not None:
            try:
                plain = self.rx.unprotect(data)
            except pylibsrtp.Error:
                st.decrypt_errors += 1
                return
            try:
                start, end = payload_bounds(plain)
            except RtpError:
                st.decrypt_errors += 1
                return
            payload = plain[start:end]
            if not payload:
                self._padding(s, len(data), ext)
                return
            if self.on_media is not None:
                self.on_media(ssrc, ext, bool(plain[1] & 0x80), payload, time.time())
            s.payloads += 1
            if self.packets is not None:
                self.packets.append((ssrc, seq, payload))
            if self.known_payloads is not None and hash(payload) not in self.known_payloads:
                s.bad_payloads += 1
            if (
                s.keyframe_first is None
                and self.keyframe_test is not None
                and plain[1] & 0x7F != 111
            ):
                s.keyframe_first = self.keyframe_test(payload)
            if s.received > 1:
                if ext > s.max_ext_seq + 1:
                    s.gaps += 1
                elif ext <= s.max_ext_seq:
                    s.reordered += 1
        if ext > s.max_ext_seq:
            s.max_ext_seq = ext

    # The rare paths of _rtp, out of line: the per-packet path makes no extra call.
    def _first_media(self) -> None:
        self.stats.first_media = time.monotonic()
        self.media_started.set()

    def _padding(self, s: StreamStats, size: int, ext: int) -> None:
        """Padding only (a bandwidth probe): not media, but it holds a sequence number."""
        s.octets -= size
        self.stats.padding += 1
        s.max_ext_seq = max(s.max_ext_seq, ext)

    def _rtcp(self, data: bytes) -> None:
        self.stats.rtcp_in += 1
        if self.rx is None or (not self.decrypt and self.on_pli is None):
            return  # bulk viewers do not need the sender reports' content
        try:
            packets = rtcp.parse(self.rx.unprotect_rtcp(data))
        except (pylibsrtp.Error, ValueError):
            return
        for p in packets:
            if isinstance(p, RtcpPsfbPacket) and p.fmt == 1:
                self.stats.plis += 1
                if self.on_pli is not None:
                    self.on_pli(p.media_ssrc)

    # -- send ------------------------------------------------------------------------
    def send_rtp(self, packet: bytes) -> None:
        if self.tx is not None:
            self._send(self.tx.protect(packet))

    def send_receiver_report(self) -> None:
        self.sync()
        if self.tx is None or not self.stats.streams:
            return
        reports = []
        for ssrc, s in list(self.stats.streams.items())[:31]:
            expected = s.expected()
            reports.append(
                RtcpReceiverInfo(
                    ssrc=ssrc,
                    fraction_lost=min(255, 256 * s.lost() // expected) if expected else 0,
                    packets_lost=min(s.lost(), 0x7FFFFF),
                    highest_sequence=s.max_ext_seq & 0xFFFFFFFF,
                    jitter=0,
                    lsr=0,
                    dlsr=0,
                )
            )
        self._send(self.tx.protect_rtcp(bytes(RtcpRrPacket(ssrc=self._ssrc, reports=reports))))

    def send_rtcp(self, packet: bytes) -> None:
        if self.tx is not None:
            self._send(self.tx.protect_rtcp(packet))

    def vanish(self) -> None:
        """Go silent as a killed process does: no DTLS close_notify, no DELETE."""
        self.sync(final=True)
        self.closed = True
        for task in (self._timer, self._tw_task):
            if task is not None:
                task.cancel()
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.closed:
            return
        self.sync(final=True)  # before the socket closes: the reader lets go of it first
        if self.dtls is not None and self.dtls.state == DtlsState.CONNECTED:
            self.dtls.close()
            self._flush_dtls()
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._tw_task is not None:
            self._tw_task.cancel()
        if self.transport is not None:
            self.transport.close()


def _row(ssrc: int, s: StreamStats) -> tuple[int, ...]:
    """A stream's figures as the native reader takes them (swarm.rs StreamRow)."""
    kf = -1 if s.keyframe_first is None else int(s.keyframe_first)
    return (ssrc, s.first_seq, s.max_ext_seq, s.received, s.octets, s.gaps, s.reordered,
            s.bad_payloads, s.payloads, kf)  # fmt: skip


class OwnSocket:
    """A peer's UDP socket read by an event-loop reader, with the parts of a datagram
    transport `ClientPeer` uses (`sendto`, `close`, `get_extra_info`)."""

    def __init__(self, host: str, loop: asyncio.AbstractEventLoop, peer: ClientPeer) -> None:
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
        )
        self.sock.setblocking(False)
        self.sock.bind((host, 0))
        self.loop = loop
        self.peer = peer
        self.reading = True
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):  # then let the loop run others
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error reported on the socket: as a transport ignores it
            self.peer.datagram_received(data, addr)

    def stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.sock.fileno())

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # a full buffer or unreachable: dropped, as UDP
            self.sock.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"socket": self.sock, "sockname": self.sock.getsockname()}.get(name, default)

    def close(self) -> None:
        self.stop_reading()
        self.sock.close()


def rtp_header(pt: int, seq: int, ts: int, ssrc: int, marker: bool, rid: str = "") -> bytes:
    """An RTP header, with the mid/rid one-byte extensions when `rid` is given."""
    b0 = 0x80
    ext = b""
    if rid:
        body = bytes([(MID_EXT << 4) | 0]) + b"1" + bytes([(RID_EXT << 4) | (len(rid) - 1)])
        body += rid.encode()
        body += bytes(-len(body) % 4)
        ext = struct.pack("!HH", 0xBEDE, len(body) // 4) + body
        b0 |= 0x10
    return struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc) + ext
