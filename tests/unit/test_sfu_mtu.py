"""Packets as large as a publisher may send within a 1,500-byte MTU are forwarded, on the
first send and on NACK answers, through real libsrtp sessions; larger ones are counted."""

from __future__ import annotations

import secrets
import struct

import pytest

from tchat.perf.webrtc_peer import ClientPeer, Identity
from tchat.sfu.dtls import PROFILES, srtp_session
from tchat.sfu.forwarder import DownTrack, Track, TwccSender
from tchat.sfu.rtp import RTP_LIMIT
from tchat.sfu.settings import SfuSettings
from tchat.sfu.worker import SfuWorker


def _pair(profile_index: int, receivers: int = 1) -> tuple[object, ...]:
    """An outbound SRTP session and `receivers` inbound ones sharing its key."""
    profile = PROFILES[profile_index]
    key = secrets.token_bytes(profile.key_length + profile.salt_length)
    rxs = [srtp_session(key, profile, inbound=True) for _ in range(receivers)]
    return srtp_session(key, profile, inbound=False), *rxs


def _rtp(size: int, seq: int, payload_head: bytes = b"\x65") -> bytes:
    """An H.264 RTP packet of `size` bytes with a two-byte-per-element extension block
    (as GStreamer writes when it has extensions) and an IDR slice payload."""
    ext = struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 7, 0, 0])
    head = struct.pack("!BBHII", 0x90, 96, seq, 90_000, 0x1234) + ext
    return head + payload_head + bytes(size - len(head) - len(payload_head))


@pytest.mark.parametrize("profile", [0, 1], ids=["aead-aes-128-gcm", "aes128-cm-sha1-80"])
@pytest.mark.parametrize("size", [1200, 1357, 1400, RTP_LIMIT, RTP_LIMIT + 12])
def test_srtp_sessions_take_packets_up_to_the_mtu(profile: int, size: int) -> None:
    tx, rx = _pair(profile)
    packet = _rtp(size, 1)
    assert rx.unprotect(tx.protect(packet)) == packet  # type: ignore[attr-defined]


@pytest.mark.parametrize("profile", [0, 1], ids=["aead-aes-128-gcm", "aes128-cm-sha1-80"])
def test_forwarder_sends_and_resends_full_size_packets(profile: int) -> None:
    """GStreamer's 1,400-byte default and the 1,472-byte maximum reach a viewer with
    transport-wide CC (our header grows the packet), first send and NACK answer."""
    tx, rx, rx_late = _pair(profile, receivers=2)
    sent: list[bytes] = []
    track = Track("video", "video/H264", 90_000)
    dt = DownTrack(ssrc=0xBEEF, pt=102, clock_rate=90_000, protect=tx.protect, send=sent.append)  # type: ignore[attr-defined]
    dt.enable_twcc(TwccSender(), 3)
    dt.set_playout_delay(4, 0, 400)
    track.add(dt, 0.0)
    sizes = [1400, RTP_LIMIT, 1000]
    for k, size in enumerate(sizes):
        assert track.forward(_rtp(size, 100 + k), 0.01 * k) == 1
    first = dt.last_seq - len(sizes) + 1
    assert track.nack(dt, [first, first + 1], 0.1) == 2
    # the resends go to a receiver that lost the originals (one that has them would
    # refuse them as replays, as a browser does)
    plain = [rx.unprotect(p) for p in sent[:3]] + [rx_late.unprotect(p) for p in sent[3:]]  # type: ignore[attr-defined]
    # payload intact: each packet is its source's payload behind our 24-byte header
    assert [len(p) - 24 for p in plain] == [s - 20 for s in [*sizes, 1400, RTP_LIMIT]]
    assert plain[3][24:] == plain[0][24:] and plain[4][24:] == plain[1][24:]


def test_worker_counts_what_cannot_be_forwarded() -> None:
    w = SfuWorker(SfuSettings(), clock=lambda: 100.0)
    ident = Identity.create()
    pub, _ = w.add_publisher("r", ClientPeer(ident).offer(publish=True))
    tx, rx = _pair(0)
    pub.srtp = type("S", (), {"rx": rx})()  # type: ignore[assignment]
    pt = next(pt for pt, t in pub.track_by_pt.items() if t.kind == "video")
    ok = struct.pack("!BBHII", 0x80, pt, 1, 0, 0x99) + b"\x65" + bytes(RTP_LIMIT - 13)
    w._rtp(pub, tx.protect(ok))  # type: ignore[attr-defined]
    assert w.rooms["r"].tracks["video"].layers[0] is not None  # taken
    big = struct.pack("!BBHII", 0x80, pt, 2, 0, 0x99) + bytes(RTP_LIMIT - 11)
    w._rtp(pub, tx.protect(big))  # type: ignore[attr-defined]
    w._rtp(pub, bytes([0x80, pt]) + bytes(3000))  # beyond the SRTP buffer itself
    assert w.drops["rtp_too_large"] == 2
    assert "error" not in w.drops and "rtp_malformed" not in w.drops
