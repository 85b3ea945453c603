"""`sfu_bench --drain`: every viewer's datagrams reach a socket of its own and a reader
process reads them all (otherwise the bench would measure drops, not deliveries)."""

from __future__ import annotations

import pytest

from tchat.perf.sfu_bench import run
from tchat.sfu import fastpath
from tests.native import require_native


@pytest.mark.parametrize("mode", ["native", "python"])
def test_drained_bench_reads_every_datagram(mode: str) -> None:
    require_native()
    # 59 packets a viewer fit in a socket's default receive buffer (~90 of this size), so
    # a reader starved on a busy box loses none: what it reads is what was sent
    figures = run(12, 60, False, twcc=True, path=fastpath.choose(mode), drain=True, rate=2000)
    assert figures["send_errors"] == 0
    assert figures["read_fraction"] == 1.0, figures  # 12 viewers × 59 packets, each read
    assert figures["reader_us_per_packet"] > 0
    assert figures["us_per_packet"] > 0
