"""Viewers that read what the bench sends them: one loopback socket each, drained by the
native swarm (`tchat_fastpath.Swarm`: epoll + recvmmsg, as the load suite's generator
reads) in a forked child process.

Why: on loopback the sender pays the receive path too. Into a socket nobody reads
(`sfu_bench`'s default) the kernel drops each datagram at the full queue; to a viewer
that reads, it queues the datagram and wakes the reader, as in the load suite. The
difference is what the SFU process pays per packet live beyond the bench.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import time
from types import ModuleType

from tchat.sfu import fastpath
from tchat.sfu.ice import Addr


class Drain:
    """`n` bound sockets read by a child process from `start()` until `close()`."""

    def __init__(self, n: int) -> None:
        module = fastpath.choose("native").module  # an error that says so when not built
        assert module is not None
        self.module: ModuleType = module
        self.socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
        for s in self.socks:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        self.pid = 0
        self._stop = self._figures = -1

    def addr(self, n: int) -> Addr:
        host, port = self.socks[n].getsockname()
        return host, port

    def start(self) -> None:
        """Fork the reader; back once it reads every socket."""
        stop_r, self._stop = os.pipe()
        self._figures, out_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: read until told to stop, then say what it read
            os.close(self._stop)
            os.close(self._figures)
            try:
                self._child(stop_r, out_w)
            finally:
                os._exit(0)
        os.close(stop_r)
        os.close(out_w)
        if os.read(self._figures, 1) != b"r":
            raise RuntimeError("the drain's reader did not start")

    def _child(self, stop_r: int, out_w: int) -> None:
        swarm = self.module.Swarm()
        for s in self.socks:
            swarm.add(s.fileno(), [], 0)
        os.write(out_w, b"r")
        expected = int(os.read(stop_r, 32) or b"0")
        # what is still in flight: until all `expected` are read, or nothing came for 2 s
        # (a reader thread starved on a busy box catches up within that)
        last, quiet_since = swarm.counters(), time.monotonic()
        while last[0] < expected and time.monotonic() - quiet_since < 2.0:
            time.sleep(0.01)
            if (now := swarm.counters()) != last:
                last, quiet_since = now, time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        figures = {"read": last[0], "calls": last[1], "cpu_s": usage.ru_utime + usage.ru_stime}
        os.write(out_w, json.dumps(figures).encode())
        swarm.close()

    def close(self, expected: int = 0) -> dict[str, float]:
        """Stop the reader once it has read the `expected` datagrams sent (or heard nothing
        for 2 s): datagrams it read, its recvmmsg calls, its CPU seconds."""
        figures: dict[str, float] = {}
        if self.pid:
            os.write(self._stop, str(expected).encode())
            figures = json.loads(os.read(self._figures, 4096))
            os.waitpid(self.pid, 0)
            os.close(self._stop)
            os.close(self._figures)
            self.pid = 0
        for s in self.socks:
            s.close()
        return figures
