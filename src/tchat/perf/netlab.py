"""Real shaped links for the T069 suite: network namespaces, veth pairs, `tc tbf`.

`NetLab(prefix)` creates one namespace per viewer, joined to the host by a veth pair
(host side 10.A.i.1/30, namespace side 10.A.i.2/30, default route to the host), and
shapes the host → namespace direction (what the SFU sends the viewer) with a token
bucket filter on the host side (rate 0: unshaped). `change(i, rate)` reshapes mid-run
(`tc qdisc change`). `lose(link, per_mille)` drops that share of the UDP datagrams
arriving in the namespace at random (nftables `numgen random`: this kernel has no
netem), a lossy last hop that makes browsers NACK. Names carry a per-run prefix;
`close()` deletes everything it made, and is safe to call twice or after a half-made
setup. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field


class NetLabError(RuntimeError):
    """A namespace, link or qdisc could not be made; the message has the command's stderr."""


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        raise NetLabError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


@dataclass
class Link:
    index: int
    netns: str
    host_if: str
    host_ip: str
    ns_ip: str
    rate_bps: int = 0


def tbf_args(rate_bps: int) -> list[str]:
    """tbf with a small bucket (so bursts are shaped too) and a 1 s queue (no drops)."""
    burst = max(4000, rate_bps // 8 // 250)  # ≥ rate/HZ for any HZ ≥ 250
    return ["rate", f"{rate_bps}bit", "burst", str(burst), "latency", "1s"]


@dataclass
class NetLab:
    prefix: str = field(default_factory=lambda: f"tl{os.getpid() % 100000}")
    links: list[Link] = field(default_factory=list)
    subnet: int = field(default_factory=lambda: 200 + os.getpid() % 50)

    def __post_init__(self) -> None:
        # a lab some killed run left behind holds its names and its 10.N.0.0/16: the
        # same N on two host links sends this lab's packets into the old one (two
        # Chromium tests timed out that way in a CI run, the left lab's pid % 50 being
        # the new one's)
        taken = _host_subnets()
        self.subnet = next(
            n for k in range(150) if (n := 100 + (self.subnet - 100 + k) % 150) not in taken
        )
        names = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        base, suffix = self.prefix, 0
        while any(name.startswith(self.prefix + "-") for name in names):
            suffix += 1
            self.prefix = f"{base}{chr(ord('a') + suffix - 1)}"

    def add(self, rate_bps: int) -> Link:
        i = len(self.links)
        link = Link(
            index=i,
            netns=f"{self.prefix}-ns{i}",
            host_if=f"{self.prefix}h{i}",
            host_ip=f"10.{self.subnet}.{i}.1",
            ns_ip=f"10.{self.subnet}.{i}.2",
        )
        self.links.append(link)  # before creating: close() cleans up a half-made link
        ns_if = f"{self.prefix}n{i}"
        _run("ip", "netns", "add", link.netns)
        _run("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", link.netns)
        _run("ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
        _run("ip", "link", "set", link.host_if, "up")
        inside = ["ip", "netns", "exec", link.netns]
        _run(*inside, "ip", "addr", "add", f"{link.ns_ip}/30", "dev", ns_if)
        _run(*inside, "ip", "link", "set", ns_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        _run(*inside, "ip", "route", "add", "default", "via", link.host_ip)
        if rate_bps:
            _run("tc", "qdisc", "add", "dev", link.host_if, "root", "tbf", *tbf_args(rate_bps))
        link.rate_bps = rate_bps
        return link

    def lose(self, link: Link, per_mille: int) -> None:
        """Drop `per_mille`/1000 of the UDP datagrams arriving in the namespace, at random."""
        inside = ["ip", "netns", "exec", link.netns, "nft"]
        _run(*inside, "add", "table", "inet", "netlab")
        _run(*inside, "add", "chain", "inet", "netlab", "in",
             "{ type filter hook input priority 0; }")  # fmt: skip
        _run(*inside, "add", "rule", "inet", "netlab", "in", "meta", "l4proto", "udp",
             "numgen", "random", "mod", "1000", "<", str(per_mille), "drop")  # fmt: skip

    def block_udp(self, link: Link) -> None:
        """Drop every UDP datagram into and out of the namespace (an office network
        that lets only TCP through): WebRTC must use ICE over TCP there."""
        inside = ["ip", "netns", "exec", link.netns, "nft"]
        _run(*inside, "add", "table", "inet", "noudp")
        for chain, hook in (("in", "input"), ("out", "output")):
            _run(*inside, "add", "chain", "inet", "noudp", chain,
                 f"{{ type filter hook {hook} priority 0; }}")  # fmt: skip
            _run(*inside, "add", "rule", "inet", "noudp", chain, "meta", "l4proto", "udp",
                 "drop")  # fmt: skip

    def change(self, link: Link, rate_bps: int) -> None:
        _run("tc", "qdisc", "change", "dev", link.host_if, "root", "tbf", *tbf_args(rate_bps))
        link.rate_bps = rate_bps

    def shape_uplink(self, link: Link, rate_bps: int) -> None:
        """Shape the namespace → host direction too (what a publisher in the namespace
        sends): tbf on the namespace's end of the veth pair."""
        ns_if = f"{self.prefix}n{link.index}"
        _run(*self.exec_args(link), "tc", "qdisc", "replace", "dev", ns_if, "root", "tbf",
             *tbf_args(rate_bps))  # fmt: skip

    def exec_args(self, link: Link) -> list[str]:
        """Prefix that runs a command inside the link's namespace."""
        return ["ip", "netns", "exec", link.netns]

    def close(self) -> None:
        for link in self.links:
            subprocess.run(["ip", "netns", "del", link.netns], capture_output=True, timeout=20)
            # deleting the namespace takes its veth end and so the pair; be sure anyway
            subprocess.run(["ip", "link", "del", link.host_if], capture_output=True, timeout=20)
        self.links.clear()


def _host_subnets() -> set[int]:
    """The N of every 10.N.x.x address on this host's links."""
    out = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=20
    ).stdout
    return {int(m) for m in re.findall(r"inet 10\.(\d+)\.", out)}


def can_create_namespaces() -> str | None:
    """None if this process can make namespaces and shaped veths, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs and tc qdiscs need CAP_NET_ADMIN)"
    lab = NetLab(prefix=f"tlchk{os.getpid() % 1000}")
    try:
        lab.add(1_000_000)
    except (NetLabError, OSError) as exc:
        return f"cannot create a network namespace with a shaped veth link: {exc}"
    finally:
        lab.close()
    return None
