"""Time-sortable unique 64-bit message ids (snowflake layout).

41 bits of milliseconds since EPOCH_MS, 10 bits of node, 12 bits of sequence:
sortable by creation time across nodes, unique per node up to 4096 ids per ms.
The node is random per process unless given, so two servers rarely collide and
never within one node. Ids travel as decimal strings in JSON (JS numbers are 53-bit).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
NODE_BITS = 10
SEQ_BITS = 12
_SEQ_MASK = (1 << SEQ_BITS) - 1


class IdGenerator:
    def __init__(self, node: int | None = None, clock_ms: Callable[[], int] | None = None) -> None:
        self.node = (int.from_bytes(os.urandom(2)) if node is None else node) & (
            (1 << NODE_BITS) - 1
        )
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._last_ms = 0
        self._seq = 0

    def next_id(self) -> int:
        now = max(self._clock_ms(), self._last_ms)  # never go backwards with the wall clock
        if now == self._last_ms:
            self._seq = (self._seq + 1) & _SEQ_MASK
            if self._seq == 0:  # 4096 ids in this ms: borrow the next one
                now += 1
        else:
            self._seq = 0
        self._last_ms = now
        return ((now - EPOCH_MS) << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | self._seq


def id_time_ms(message_id: int) -> int:
    """Creation time (Unix ms) encoded in an id."""
    return (message_id >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS


def first_id_at(unix_ms: int) -> int:
    """The smallest id that could have been made at unix_ms (for range queries)."""
    return (unix_ms - EPOCH_MS) << (NODE_BITS + SEQ_BITS)
