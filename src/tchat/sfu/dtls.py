"""DTLS 1.2 with DTLS-SRTP (RFC 5764) over pyOpenSSL memory BIOs, sans-I/O.

One `DtlsEndpoint` per peer: `receive(data)` feeds a datagram, `datagrams_to_send()`
drains the flight as whole records packed into ≤ MTU datagrams, `get_timeout()` /
`handle_timeout()` drive retransmission. The SFU is always the server; the load
generator's viewers use the client role. No cookie exchange: the worker only
accepts DTLS from an address that passed an authenticated STUN check.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import ModuleType

from aiortc.rtcdtlstransport import (
    SRTP_AEAD_AES_128_GCM,
    SRTP_AES128_CM_SHA1_80,
    RTCCertificate,
    SRTPProtectionProfile,
    certificate_digest,
)
from OpenSSL import SSL
from pylibsrtp import Policy, Session
from pylibsrtp._binding import ffi

MTU = 1200
# pylibsrtp 1.0 works in one 1,500-byte buffer per session and keeps 144 bytes of it
# for the SRTP trailer (tag + MKI), so it refuses RTP over 1,356 bytes: less than a
# publisher may send within an Ethernet path MTU (GStreamer packetizes to 1,400) plus
# the header extensions we add. The largest RTP the SFU forwards (sfu/rtp.py RTP_LIMIT)
# + our header growth + that reserve fits this buffer.
SRTP_BUFFER = 2048
# AES-128-GCM first: cheapest to protect on the fan-out path (see SFU-NOTES.md).
PROFILES = [SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80]


class DtlsState(enum.Enum):
    HANDSHAKE = "handshake"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SrtpSessions:
    rx: Session  # unprotects what the peer sends
    tx: Session | NativeTx  # protects what we send
    profile: str
    # what `rx` was made from: a load-generator viewer's native reader unprotects alike
    rx_key: bytes = b""
    libsrtp_profile: int = 0


def make_context(cert: RTCCertificate) -> SSL.Context:
    # aiortc's context: its cipher list, its verify-any callback (we check the
    # fingerprint ourselves once the handshake completes), our SRTP profile order.
    return cert._create_ssl_context(PROFILES)


def fingerprint(cert: RTCCertificate) -> str:
    for fp in cert.getFingerprints():
        if fp.algorithm == "sha-256":
            return str(fp.value)
    raise RuntimeError("certificate has no sha-256 fingerprint")


def split_records(data: bytes, mtu: int = MTU) -> list[bytes]:
    """Whole DTLS records (13-byte header, length in bytes 11-12) packed into ≤ mtu datagrams."""
    records = []
    pos = 0
    while pos + 13 <= len(data):
        length = 13 + ((data[pos + 11] << 8) | data[pos + 12])
        records.append(data[pos : pos + length])
        pos += length
    out: list[bytes] = []
    buf = b""
    for rec in records:
        if buf and len(buf) + len(rec) > mtu:
            out.append(buf)
            buf = b""
        buf += rec
    if buf:
        out.append(buf)
    return out


class DtlsEndpoint:
    def __init__(
        self,
        ctx: SSL.Context,
        server: bool,
        remote_fingerprints: list[tuple[str, str]],
        native: ModuleType | None = None,
    ) -> None:
        self._ssl = SSL.Connection(ctx, None)
        self._native = native  # outbound RTP protected by tchat_fastpath (sfu/fastpath.py)
        if server:
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()
        self._server = server
        self._remote_fps = remote_fingerprints
        self.state = DtlsState.HANDSHAKE
        self.error = ""
        self.srtp: SrtpSessions | None = None

    def start(self) -> None:
        """Client: produce the ClientHello (server: nothing to do)."""
        if not self._server:
            self._handshake()

    def receive(self, data: bytes) -> None:
        if self.state in (DtlsState.CLOSED, DtlsState.FAILED):
            return
        self._ssl.bio_write(data)
        if self.state == DtlsState.HANDSHAKE:
            self._handshake()
        else:
            try:
                self._ssl.recv(1500)  # application data is not used; alerts land here
            except SSL.ZeroReturnError:
                self.state = DtlsState.CLOSED
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                self._fail(f"DTLS error: {exc}")

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            return
        except SSL.ZeroReturnError:
            self.state = DtlsState.CLOSED
            return
        except SSL.Error as exc:
            self._fail(f"DTLS handshake failed: {exc}")
            return
        self._connected()

    def _connected(self) -> None:
        x509 = self._ssl.get_peer_certificate()
        if x509 is None:
            self._fail("peer sent no certificate")
            return
        cert = x509.to_cryptography()
        ok = any(
            certificate_digest(cert, alg).upper() == value.upper()
            for alg, value in self._remote_fps
            if alg in ("sha-256", "sha-384", "sha-512")
        )
        if not ok:
            self._fail("peer certificate does not match the SDP fingerprint")
            return
        selected = self._ssl.get_selected_srtp_profile()
        profile: SRTPProtectionProfile | None = next(
            (p for p in PROFILES if p.openssl_profile == selected), None
        )
        if profile is None:
            self._fail("no SRTP profile negotiated")
            return
        material = self._ssl.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
        )
        # key/salt 0 belong to the client, 1 to the server (RFC 5764 §4.2)
        tx_idx, rx_idx = (1, 0) if self._server else (0, 1)
        rx_key = profile.get_key_and_salt(material, rx_idx)
        self.srtp = SrtpSessions(
            rx=srtp_session(rx_key, profile, True),
            tx=outbound(profile.get_key_and_salt(material, tx_idx), profile, self._native),
            profile=selected.decode(),
            rx_key=rx_key,
            libsrtp_profile=profile.libsrtp_profile,
        )
        self.state = DtlsState.CONNECTED

    def _fail(self, reason: str) -> None:
        self.state = DtlsState.FAILED
        self.error = reason

    def datagrams_to_send(self) -> list[bytes]:
        data = b""
        while True:
            try:
                chunk = self._ssl.bio_read(16384)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            data += chunk
        return split_records(data) if data else []

    def get_timeout(self) -> float | None:
        """Seconds until a retransmission is due while handshaking, else None."""
        if self.state != DtlsState.HANDSHAKE:
            return None
        t = self._ssl.DTLSv1_get_timeout()
        return None if t is None else float(t)

    def handle_timeout(self) -> None:
        if self.state == DtlsState.HANDSHAKE:
            try:
                self._ssl.DTLSv1_handle_timeout()
            except SSL.Error as exc:
                self._fail(f"DTLS retransmission failed: {exc}")

    def close(self) -> None:
        """Send close_notify (drain with datagrams_to_send)."""
        if self.state == DtlsState.CONNECTED:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
        self.state = DtlsState.CLOSED


class _Session(Session):
    """pylibsrtp's Session with a buffer of SRTP_BUFFER bytes (same calls, same
    libsrtp; its `protect`/`unprotect` bound the packet by the buffer's length)."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        self._cdata = ffi.new("char[]", SRTP_BUFFER)
        self._buffer = ffi.buffer(self._cdata)


class NativeTx:
    """Outbound SRTP whose RTP protection is tchat_fastpath's `SrtpSender` (ring's and
    RustCrypto's ciphers, byte for byte libsrtp's output: test_fastpath_diff.py),
    the one the native fan-out protects with, so each stream keeps one rollover counter;
    SRTCP stays with libsrtp (a few packets a second)."""

    __slots__ = ("module", "protect", "protect_rtcp", "rtp")

    def __init__(self, module: ModuleType, key: bytes, profile: SRTPProtectionProfile) -> None:
        self.module = module
        self.rtp = module.SrtpSender(key, profile.libsrtp_profile)
        self.protect = self.rtp.protect
        self.protect_rtcp = srtp_session(key, profile, False).protect_rtcp


def outbound(
    key: bytes, profile: SRTPProtectionProfile, native: ModuleType | None = None
) -> Session | NativeTx:
    """What protects what we send: native when the fan-out is (sfu/fastpath.py)."""
    return srtp_session(key, profile, False) if native is None else NativeTx(native, key, profile)


def srtp_session(key: bytes, profile: SRTPProtectionProfile, inbound: bool) -> Session:
    policy = Policy(
        key=key,
        ssrc_type=Policy.SSRC_ANY_INBOUND if inbound else Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=profile.libsrtp_profile,
    )
    policy.allow_repeat_tx = True  # NACK answers resend a sequence number already sent
    policy.window_size = 1024
    return _Session(policy)
