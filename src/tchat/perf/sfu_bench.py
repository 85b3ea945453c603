"""Micro-benchmark of the SFU hot path: `Track.forward` fanning out to N viewers.

Real pieces only: pylibsrtp protect with each viewer's own AES-128-GCM key and a
loopback `sendto` per packet (to a socket nobody reads; the kernel drops them).
`python -m tchat.perf.sfu_bench --viewers 200 --packets 2000 [--twcc] [--profile]` prints
µs of CPU per delivered packet, split into protect, sendto and the rest (rewrite);
`--twcc` stamps transport-wide sequence numbers and playout delay, as for adaptive
viewers.
`--nic` sends by a dropping network device (a namespace of its own; root) instead of to a
loopback socket nobody reads, whose receive path the sender pays too. `--drain` gives each
viewer its own socket, read by another process as the load suite's viewers read
(perf/drain.py); `--rate P` paces the packets at P a second, as a live track does.
`--fastpath native|python|both` (default `SFU_FASTPATH`, else auto) picks the fan-out
(sfu/fastpath.py); `both` measures the two side by side in one run.
`--relay` prints the cluster relay's CPU per relayed packet instead (`relay_cost`);
`--path` the whole datagram path through `SfuCore.receive_datagram` (SRTP unprotect,
demux, forward; sessions connected in memory: `path_cost`).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import os
import pstats
import socket
import struct
import subprocess
import time
from typing import Any

from aioice import stun

from tchat.perf.drain import Drain
from tchat.perf.webrtc_peer import ClientPeer, Identity, rtp_header
from tchat.sfu import fastpath
from tchat.sfu.core import SfuCore
from tchat.sfu.dtls import PROFILES, DtlsEndpoint, DtlsState, outbound
from tchat.sfu.forwarder import DownTrack, Track
from tchat.sfu.ice import Addr
from tchat.sfu.peer import Peer
from tchat.sfu.settings import SfuSettings
from tchat.sfu.tcp import wire_addr


def _downtrack(path: fastpath.FastPath, n: int, send: Any, fd: int, addr: Addr) -> DownTrack:
    """Viewer n's downtrack with its own AES-128-GCM key, on `path`'s fan-out."""
    tx = outbound(os.urandom(28), PROFILES[0], path.module)
    dt = fastpath.downtrack(tx, 1000 + n, 96, 90000, send)
    dt.route(fd, addr, send)
    return dt


def run(
    viewers: int,
    packets: int,
    profile: bool,
    twcc: bool = False,
    path: fastpath.FastPath | None = None,
    nic: bool = False,
    drain: bool = False,
    rate: float = 0.0,
) -> dict[str, float]:
    """µs of CPU per delivered packet of `Track.forward` to `viewers` (`nic`: sent by a
    dropping device, `dummy_nic`, not loopback; `drain`: each viewer its own socket,
    read as the load suite's generator reads, `Drain`; `rate`: packets a second, as a
    live track paces them, else back to back)."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    addr = (DUMMY_PEER, 9) if nic else sink.getsockname()
    readers = Drain(viewers) if drain else None

    def sender(to: Addr) -> Any:
        return lambda data: _send(out, data, to)

    send = sender(addr)
    path = path or fastpath.choose("python")
    track = Track("video", "video/H264", 90000)
    payload = bytes([0x65]) + os.urandom(1100)
    first = struct.pack("!BBHII", 0x80, 102, 0, 0, 42) + payload
    track.forward(first, 0.0)
    for n in range(viewers):
        to = readers.addr(n) if readers else addr
        dt = _downtrack(path, n, sender(to), out.fileno(), to)
        if twcc:
            dt.enable_twcc(dt.new_twcc(), 5)
            dt.set_playout_delay(6, 0, 200)
        track.add(dt, 0.0)
    pkts = [struct.pack("!BBHII", 0x80, 102, i, i * 3000, 42) + payload for i in range(1, packets)]
    if readers:
        readers.start()
    cpu = _timed(track, pkts, rate, profile)
    delivered = viewers * len(pkts)
    read = readers.close(delivered) if readers else {}
    protect_us, send_us = _parts(path, payload, send)
    sink.close()
    out.close()
    total = 1e6 * cpu / delivered
    fan = track.fanout
    return {
        "native": float(path.native),
        "us_per_packet": total,
        "protect_us": protect_us,
        "sendto_us": send_us,
        "rewrite_and_loop_us": total - protect_us - send_us,
        "syscalls_per_packet": fan.syscalls / len(pkts) if fan is not None else float(viewers),
        "send_errors": float(fan.send_errors) if fan is not None else 0.0,
        "device_took_packets": float(_device_took()) if nic else 0.0,
        **_read_figures(read, delivered),
    }


def _send(out: socket.socket, data: bytes, to: Addr) -> None:
    try:
        out.sendto(data, to)
    except BlockingIOError:
        pass


def _timed(track: Track, pkts: list[bytes], rate: float, profile: bool) -> float:
    """CPU seconds of forwarding `pkts` (paced at `rate` a second, else back to back)."""
    prof = cProfile.Profile() if profile else None
    start = time.monotonic()
    t0 = time.process_time()
    with prof or contextlib.nullcontext():
        for i, p in enumerate(pkts):
            if rate and (ahead := start + i / rate - time.monotonic()) > 0:
                time.sleep(ahead)
            track.forward(p, 0.01 * i)
    cpu = time.process_time() - t0
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(8)
    return cpu


def _read_figures(read: dict[str, float], delivered: int) -> dict[str, float]:
    """What the drain's reader got of the `delivered` datagrams, and its CPU for each."""
    if not read:
        return {}
    return {
        "read_fraction": read["read"] / delivered,
        "reader_us_per_packet": 1e6 * read["cpu_s"] / max(read["read"], 1),
        "datagrams_per_recvmmsg": read["read"] / max(read["calls"], 1),
    }


def _parts(path: fastpath.FastPath, payload: bytes, send: Any) -> tuple[float, float]:
    """µs of one protect (called from Python) and one Python sendto, same sizes."""
    s = outbound(os.urandom(28), PROFILES[0], path.module)
    t0 = time.process_time()
    for i in range(20000):
        s.protect(struct.pack("!BBHII", 0x80, 96, i, 0, 7) + payload)
    protect_us = 1e6 * (time.process_time() - t0) / 20000
    enc = s.protect(struct.pack("!BBHII", 0x80, 96, 20000, 0, 7) + payload)
    t0 = time.process_time()
    for _ in range(20000):
        send(enc)
    return protect_us, 1e6 * (time.process_time() - t0) / 20000


def _device_took() -> int:
    """Packets the device was handed and dropped (dummy_nic): proof the sends got there."""
    out = subprocess.run(["ip", "-s", "link", "show", "nic0"], capture_output=True, text=True)
    lines = out.stdout.splitlines()
    i = next(n for n, line in enumerate(lines) if line.strip().startswith("TX:"))
    return int(lines[i + 1].split()[3])  # TX "dropped": a veth whose peer is down


DUMMY_PEER = "10.213.0.2"


def dummy_nic() -> None:
    """Move this process into a network namespace of its own with a device that drops
    what it is given (root): a veth whose peer is down, the peer's MAC address fixed. What
    is sent to DUMMY_PEER then costs the kernel's whole send path down to the device, as a
    NIC driver takes it, instead of loopback's send *and* receive (into a socket nobody
    reads), both charged to the sender. The namespace ends with this process."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) needs root")
    for cmd in (
        "ip link set lo up",
        "ip link add nic0 type veth peer name nic1",
        "ip addr add 10.213.0.1/16 dev nic0",
        "ip link set nic0 up",
        f"ip neigh add {DUMMY_PEER} lladdr 02:00:00:00:00:02 dev nic0 nud permanent",
    ):
        subprocess.run(cmd.split(), check=True)


def handshake(
    core: SfuCore, outbox: list[tuple[bytes, Addr]], peer: Peer, client: ClientPeer, addr: Addr
) -> DtlsEndpoint:
    """Connect `peer` of `core` from `addr` without a socket: the client's nominating check,
    its answer to the SFU's check, then DTLS with a real client endpoint. `outbox` is
    where the core's send callback puts (data, addr); what went to `addr` is taken."""

    def take() -> list[bytes]:
        mine = [d for d, a in outbox if a == addr]
        outbox[:] = [(d, a) for d, a in outbox if a != addr]
        return mine

    now = core.now()
    check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    check.attributes["USERNAME"] = f"{peer.ice.local_ufrag}:{peer.ice.remote_ufrag}"
    check.attributes["ICE-CONTROLLING"] = 1
    check.attributes["USE-CANDIDATE"] = None
    check.add_message_integrity(peer.ice.local_pwd.encode())
    core.receive_datagram(bytes(check), addr, now)
    for msg in map(stun.parse_message, take()):
        if msg.message_class == stun.Class.REQUEST:  # the SFU's check: answer it
            reply = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, msg.transaction_id)
            reply.attributes["XOR-MAPPED-ADDRESS"] = wire_addr(addr)  # a TCP one untagged
            reply.add_message_integrity(client.pwd.encode())
            core.receive_datagram(bytes(reply), addr, now)
    dtls = DtlsEndpoint(
        client.identity.ctx, server=False, remote_fingerprints=[("sha-256", core.fingerprint)]
    )
    dtls.start()
    for _ in range(10):
        for d in dtls.datagrams_to_send():
            core.receive_datagram(d, addr, now)
        for d in take():
            dtls.receive(d)
    if dtls.state != DtlsState.CONNECTED or peer.srtp is None:
        raise RuntimeError(f"in-memory handshake of {addr} did not complete")
    return dtls


def _bench_settings(viewers: int, mode: str) -> SfuSettings:
    """Nothing times out, nothing is refused: the bench measures, not admits."""
    return SfuSettings(
        idle_timeout_s=1e9,
        consent_timeout_s=1e9,
        max_peers=viewers + 10,
        publisher_reserve=0,
        max_load=1e9,
        fastpath=mode,
    )


def path_cost(viewers: int, packets: int, mode: str = "python") -> dict[str, float]:
    """CPU per delivered packet of the whole datagram path, `SfuCore.receive_datagram`:
    SRTP unprotect, demux, `Track.forward` to `viewers` (rewrite, protect) and a loopback
    sendto each. No event loop: sessions are connected in memory (`handshake`), the
    clock is faked; each viewer is a loopback socket nobody reads (`mode`: the fan-out,
    whose native path sends by the core's socket as a worker's does)."""
    clock = [100.0]
    outbox: list[tuple[bytes, Addr]] = []
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(viewers)]
    for sink in sinks:
        sink.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    capture = [True]

    def send(data: bytes, addr: Addr) -> None:
        if capture[0]:
            outbox.append((data, addr))
            return
        try:
            out.sendto(data, addr)
        except BlockingIOError:
            pass

    core = SfuCore(_bench_settings(viewers, mode), send, lambda: clock[0])
    core.udp_fd = out.fileno()
    identity = Identity.create()
    client = ClientPeer(identity)
    pub, _ = core.add_publisher("bench", client.offer(rids=["h", "m", "l"], publish=True))
    srtp = handshake(core, outbox, pub, client, ("10.0.0.1", 5000)).srtp
    for i in range(viewers):
        client = ClientPeer(identity)
        peer, _ = core.add_viewer("bench", client.offer())
        handshake(core, outbox, peer, client, sinks[i].getsockname())
    assert srtp is not None
    body = bytes(1100)
    first = srtp.tx.protect(rtp_header(102, 1, 3000, 33, True, "h") + b"\x65" + body)
    pkts = [
        srtp.tx.protect(rtp_header(102, seq, seq * 3000, 33, True, "h") + b"\x41" + body)
        for seq in range(2, packets + 2)
    ]
    capture[0] = False
    publisher = ("10.0.0.1", 5000)
    core.receive_datagram(first, publisher, clock[0])  # the keyframe every viewer starts on
    before = core.delivered
    t0 = time.process_time()
    for data in pkts:
        clock[0] += 0.001
        core.receive_datagram(data, publisher, clock[0])
    cpu = time.process_time() - t0
    for sink in [*sinks, out]:
        sink.close()
    delivered = core.delivered - before
    return {
        "native": float(core.fastpath.native),
        "path_us_per_packet": 1e6 * cpu / delivered,
        "delivered": float(delivered),
    }


def relay_cost(packets: int = 20000) -> dict[str, float]:
    """CPU per packet relayed origin → edge, both ends in this process, real loopback UDP:
    the origin's relay sink (prefix + sendto) and the edge's recvfrom + `Relay.received`
    (parse, gap check, cache, forward to zero viewers), minus the same packets forwarded
    with no relay at all. Kernel time of both syscalls is included (process CPU)."""
    from tchat.sfu.cluster.relay import Relay
    from tchat.sfu.cluster.wire import MEDIA, PREFIX, media_from_json
    from tchat.sfu.core import SfuCore

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    to, origin_addr = rx.getsockname(), tx.getsockname()
    payload = bytes([0x41]) + os.urandom(1100)
    media = [{"kind": "video", "mime": "video/H264", "payload_type": 102, "clock_rate": 90000}]
    edge = Relay(SfuCore(SfuSettings(), lambda data, addr: None, clock=time.monotonic))
    edge.edge.open("r", 1, origin_addr, "o", media_from_json(media))
    head = PREFIX.pack(MEDIA, 1, 0, 0)

    def pkts(base: int) -> list[bytes]:
        return [
            struct.pack("!BBHII", 0x80, 102, (base + i) & 0xFFFF, (base + i) * 3000, 42) + payload
            for i in range(packets)
        ]

    plain = Track("video", "video/H264", 90000)
    batch = pkts(0)
    t0 = time.process_time()
    for p in batch:
        plain.forward(p, 0.0)
    base_cpu = time.process_time() - t0
    relayed = Track("video", "video/H264", 90000)

    def sink(index: int, data: bytes) -> None:
        tx.sendto(head + data, to)

    relayed.relays.append(sink)
    batch = pkts(packets)
    received = 0
    t0 = time.process_time()
    for p in batch:
        relayed.forward(p, 0.0)
        data, addr = rx.recvfrom(2048)
        edge.received(data, addr)
        received += 1
    relay_cpu = time.process_time() - t0
    rx.close()
    tx.close()
    return {
        "relay_cpu_us_per_packet": 1e6 * (relay_cpu - base_cpu) / received,
        "forward_no_viewers_us": 1e6 * base_cpu / packets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tchat.perf.sfu_bench")
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--twcc", action="store_true", help="adaptive viewers (TWCC stamping)")
    parser.add_argument("--relay", action="store_true", help="relay cost per packet instead")
    parser.add_argument(
        "--path", action="store_true", help="the whole datagram path (SfuCore) instead"
    )
    parser.add_argument(
        "--fastpath",
        choices=[*fastpath.MODES, "both"],
        default=os.environ.get("SFU_FASTPATH", "auto"),
        help="the fan-out: native, python, auto (native when built), both (side by side)",
    )
    parser.add_argument(
        "--nic",
        action="store_true",
        help="send by a network device that drops (a namespace of our own; root), not loopback",
    )
    parser.add_argument(
        "--drain",
        action="store_true",
        help="each viewer its own socket, read by a reader process as live viewers read "
        "(loopback's receive path then costs what it does live; needs the native module)",
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="packets a second (default: back to back)"
    )
    args = parser.parse_args()
    if args.nic:
        dummy_nic()
    if args.relay:
        _print(relay_cost(args.packets))
        return
    for mode in ("python", "native") if args.fastpath == "both" else (args.fastpath,):
        print(f"fan-out: {fastpath.choose(mode).describe()}")
        if args.path:
            _print(path_cost(args.viewers, args.packets, mode))
        else:
            path = fastpath.choose(mode)
            _print(
                run(
                    args.viewers,
                    args.packets,
                    args.profile,
                    args.twcc,
                    path,
                    args.nic,
                    args.drain,
                    args.rate,
                )
            )


def _print(figures: dict[str, float]) -> None:
    for k, v in figures.items():
        print(f"{k:22s} {v:6.2f}")


if __name__ == "__main__":
    main()
