"""The native fan-out (tchat_fastpath) against the Python reference: the same packets,
keys, layer switches, padding, publisher padding, NACKs, joins and leaves fed to both
must give every viewer byte-identical datagrams (SRTP included), identical NACK
answers and identical rewrite state. The native viewers' datagrams are read from real
loopback sockets (its sendmmsg), a TCP-like viewer's through the Python sender."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable
from typing import Any

import pylibsrtp
import pytest
from aiortc.rtcdtlstransport import SRTPProtectionProfile

from tchat.sfu import fastpath
from tchat.sfu.dtls import PROFILES, outbound
from tchat.sfu.forwarder import LOW, DownTrack, RetransmitBudget, Track
from tests.native import require_native

RID_EXT = 3
LAYERS = 3
STEPS = 900  # packets in, over all layers (~10 s of three-layer video)


def _native() -> Any:
    require_native()
    return fastpath.choose("native").module


class Viewers:
    """A path's viewers: a factory for their downtracks and what each received."""

    def __init__(self, profile: SRTPProtectionProfile, native: Any) -> None:
        self.profile = profile
        self.native = native
        self.got: dict[int, list[bytes]] = {}
        self.socks: dict[int, socket.socket] = {}
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.out.bind(("127.0.0.1", 0))

    def make(self, n: int, key: bytes, first: tuple[int, int], tcp: bool = False) -> DownTrack:
        self.got[n] = []
        if self.native is None:
            tx = outbound(key, self.profile)
            return DownTrack(0x1000 + n, 96, 90000, tx.protect, self.got[n].append, 2, *first)
        tx = outbound(key, self.profile, self.native).rtp
        if tcp:  # framed in Python: the slot hands datagrams to `send`
            dt = fastpath.NativeDownTrack(
                self.native, tx, 0x1000 + n, 96, 90000, self.got[n].append, 2, *first
            )
            dt.route(-1, ("10.0.0.1-tcp", 9), self.got[n].append)
            return dt
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        self.socks[n] = sock
        addr = sock.getsockname()

        def send(data: bytes) -> None:  # NACK answers and padding, as Peer.send does
            self.out.sendto(data, addr)

        dt = fastpath.NativeDownTrack(self.native, tx, 0x1000 + n, 96, 90000, send, 2, *first)
        dt.route(self.out.fileno(), addr, send)
        return dt

    def drain(self) -> None:
        for n, sock in self.socks.items():
            while True:
                try:
                    self.got[n].append(sock.recv(4096))
                except BlockingIOError:
                    break

    def close(self) -> None:
        for sock in [self.out, *self.socks.values()]:
            sock.close()


def _packets(rng: random.Random) -> list[tuple[float, int, bytes]]:
    """(time, layer, RTP packet) of three simulcast layers: 30 fps, a keyframe every
    second, frames of 1-4 packets, now and then a publisher's padding-only probe."""
    out = []
    seqs = [rng.randrange(65536) for _ in range(LAYERS)]  # some wrap during the run
    seqs[2] = 65500
    stamps = [rng.randrange(1 << 32) for _ in range(LAYERS)]
    frame = 0
    while len(out) < STEPS:
        now = frame / 30
        for layer in range(LAYERS):
            parts = rng.randint(1, layer + 2)
            for k in range(parts):
                head = 0x65 if frame % 30 == 0 and k == 0 else 0x41
                size = rng.randint(50, 1100)
                marker = 0x80 if k == parts - 1 else 0
                seq = seqs[layer]
                seqs[layer] = (seq + 1) & 0xFFFF
                hdr = struct.pack("!BBHII", 0x80, marker | 102, seq, stamps[layer], 0x500 + layer)
                out.append((now, layer, hdr + bytes([head]) + rng.randbytes(size)))
            if rng.random() < 0.05:  # padding-only: P bit, 40 bytes of padding
                seq = seqs[layer]
                seqs[layer] = (seq + 1) & 0xFFFF
                hdr = struct.pack("!BBHII", 0xA0, 102, seq, stamps[layer], 0x500 + layer)
                out.append((now, layer, hdr + bytes(39) + b"\x28"))
            stamps[layer] = (stamps[layer] + 3000) & 0xFFFFFFFF
        frame += 1
    return out


def _run(path: Viewers, seed: int) -> tuple[list[DownTrack], list[int]]:
    """The scenario: five viewers (one adaptive with TWCC and playout delay, one with
    RTX, one on a TCP-like route), a cap down and up, probe padding, NACKs (some of our
    padding), a late joiner and a leaver. Returns the viewers and each NACK's answer."""
    rng = random.Random(seed)
    keys = [rng.randbytes(path.profile.key_length + path.profile.salt_length) for _ in range(6)]
    firsts = [(rng.randrange(65536), rng.randrange(1 << 32)) for _ in range(6)]
    firsts[0] = (65400, firsts[0][1])  # its numbers wrap: the rollover counter moves on
    track = Track("video", "video/H264", 90000, ["l", "m", "h"], RID_EXT)
    dts = [path.make(n, keys[n], firsts[n], tcp=(n == 4)) for n in range(5)]
    dts[1].enable_twcc(dts[1].new_twcc(), 5)
    dts[1].set_playout_delay(6, 0, 200)
    dts[2].enable_rtx(0x2002, 97, 77)
    for dt in dts:
        track.add(dt, 0.0)
    answers: list[int] = []
    events: dict[int, Callable[[float], None]] = {
        100: lambda now: track.set_max_layer(dts[0], LOW, now),
        200: lambda now: answers.append(track.pad(dts[1], 700, now)),
        210: lambda now: answers.append(track.pad(dts[2], 900, now)),
        250: lambda now: answers.append(track.pad(dts[3], 500, now)),
        300: lambda now: dts.append(_join(path, track, keys[5], firsts[5], now)),
        400: lambda now: track.set_max_layer(dts[0], 2, now),
        600: lambda now: track.remove(dts[3]),
    }
    budget = RetransmitBudget()
    for step, (now, layer, pkt) in enumerate(_packets(rng)):
        track.forward(pkt, now, index_hint=layer)
        if step in events:
            events[step](now)
        if step % 97 == 50:  # NACKs: recent, older, padding's, one never sent
            for dt in dts:
                lost = [(dt.last_seq - d) & 0xFFFF for d in (0, 3, 40, 700)] + [dt.last_seq + 5]
                answers.append(track.nack(dt, lost, now, budget))
        if step % 30 == 0:
            track.tick(now)
        path.drain()
    path.drain()
    return dts, answers


def _join(path: Viewers, track: Track, key: bytes, first: tuple[int, int], now: float) -> DownTrack:
    dt = path.make(5, key, first)
    track.add(dt, now)
    return dt


def _segments(dt: DownTrack) -> list[tuple[int, int, int, int]]:
    return [(first, -1 if lay is None else lay.index, so, to) for first, lay, so, to in dt.history]


STATE = ("current", "target", "seq_offset", "ts_offset", "last_seq", "last_ts", "last_time",
         "packets", "octets", "frames", "padded", "skipped", "switches", "rtx_seq", "rtx_octets")


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.libsrtp_profile)
def test_native_fanout_sends_what_the_python_path_sends(profile: SRTPProtectionProfile) -> None:
    native = _native()
    ref, fast = Viewers(profile, None), Viewers(profile, native)
    try:
        ref_dts, ref_answers = _run(ref, seed=7)
        fast_dts, fast_answers = _run(fast, seed=7)
    finally:
        ref.close()
        fast.close()
    assert fast_answers == ref_answers and sum(ref_answers) > 20
    for n in ref.got:
        assert len(ref.got[n]) > 100, n
        assert fast.got[n] == ref.got[n], f"viewer {n}: datagrams differ"
    for a, b in zip(ref_dts, fast_dts, strict=True):
        assert {k: getattr(b, k) for k in STATE} == {k: getattr(a, k) for k in STATE}
        assert b.nack_stats.as_dict() == a.nack_stats.as_dict()
        assert _segments(b) == _segments(a)
    assert ref_dts[0].switches >= 3  # the cap's switches happened on both paths
    tw_ref, tw_fast = ref_dts[1].tw, fast_dts[1].tw
    assert tw_ref is not None and tw_fast is not None and tw_fast.seq == tw_ref.seq
    assert [tw_fast.lookup(s) for s in range(tw_ref.seq)] == [
        tw_ref.lookup(s) for s in range(tw_ref.seq)
    ]


def test_native_fanout_refuses_bad_input_clearly() -> None:
    native = _native()
    with pytest.raises(pylibsrtp.Error, match="unsupported parameter"):
        native.SrtpSender(b"short", PROFILES[0].libsrtp_profile)
    with pytest.raises(pylibsrtp.Error, match="unsupported parameter"):
        native.SrtpSender(bytes(28), 2)  # a profile it does not do
    sender = native.SrtpSender(bytes(28), PROFILES[0].libsrtp_profile)
    with pytest.raises(pylibsrtp.Error, match="unsupported parameter"):
        sender.protect(bytes(11))  # shorter than an RTP header
    slot = native.Slot(sender, 1, 96)
    with pytest.raises(ValueError, match="not an IP address"):
        slot.route(3, ("example.org", 5), None)
    with pytest.raises(ValueError, match="header extension"):
        slot.set_twcc(native.TwccRing(), b"\x00" * 8)
    fan = native.Fanout()
    fan.add(slot)
    slot.current = 0
    with pytest.raises(ValueError, match="too long"):
        fan.forward(0, 0, 1, 1, bytes(2000), 0.0)


def test_one_viewer_refused_does_not_stop_the_others() -> None:
    """A viewer's stream that refuses a packet (a send more than the replay window back)
    is skipped and counted; an address the kernel refuses is counted; the rest go out."""
    native = _native()
    gcm = PROFILES[0].libsrtp_profile
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fan = native.Fanout()
    slots = [native.Slot(native.SrtpSender(bytes([n]) * 28, gcm), 100 + n, 96) for n in range(3)]
    for slot in slots:
        slot.current = 0
        fan.add(slot)
    slots[0].route(out.fileno(), rx.getsockname(), None)
    slots[1].route(out.fileno(), ("127.0.0.1", 9, 0, 0), None)  # asyncio's 4-tuple form
    slots[2].route(out.fileno(), ("255.255.255.255", 9), None)  # broadcast: EACCES
    assert fan.forward(0, 0x80, 5000, 1, b"frame", 0.0) == 3
    slots[0].seq_offset = (65536 - 3000) & 0xFFFF  # its next number is far behind
    assert fan.forward(0, 0x80, 5001, 2, b"frame", 0.1) == 2
    assert fan.protect_errors == 1 and fan.send_errors == 2
    assert len(rx.recv(2048)) == 12 + 5 + 16  # the first packet, protected
    rx.close()
    out.close()


def test_many_viewers_across_batches_sockets_and_senders() -> None:
    """150 viewers (past one sendmmsg batch), two sending sockets interleaved and one
    viewer routed through Python: each gets exactly what libsrtp makes of its packets."""
    native = _native()
    profile = PROFILES[0]
    outs = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    fan = native.Fanout()
    viewers = []
    for n in range(150):
        key = bytes([n]) * 28
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        got: list[bytes] = []
        slot = native.Slot(native.SrtpSender(key, profile.libsrtp_profile), 0x100 + n, 96)
        slot.current, slot.seq_offset = 0, n
        if n == 70:
            slot.route(-1, None, got.append)
        else:
            slot.route(outs[(n // 7) % 2].fileno(), sock.getsockname(), None)
        fan.add(slot)
        viewers.append((sock, got, outbound(key, profile)))
    for i in range(3):
        assert fan.forward(0, 0x80, 100 + i, 3000 * i, bytes([i]) * 900, 0.0) == 150
    for n, (sock, got, ref) in enumerate(viewers):
        for i in range(3):
            plain = struct.pack("!BBHII", 0x80, 0x80 | 96, 100 + i + n, 3000 * i, 0x100 + n)
            want = ref.protect(plain + bytes([i]) * 900)
            assert (got[i] if n == 70 else sock.recv(2048)) == want, (n, i)
        sock.close()
    assert fan.send_errors == 0 and fan.datagrams == 3 * 149
    for out in outs:
        out.close()
