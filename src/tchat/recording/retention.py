"""Retention: which recordings are due for deletion (pure), and the sweeper that deletes them.

The S3 lifecycle rule deletes objects on its own; the sweeper is what makes
retention hold everywhere (local directory, stores without lifecycle rules) and
what moves the catalog to `expired`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from tchat.logs import kv
from tchat.recording.catalog import Catalog, Recording, transition
from tchat.storage import ObjectStore, StoreError

log = logging.getLogger("tchat.recording.retention")

EXPIRABLE = ("available", "failed")


def due_for_expiry(recordings: Iterable[Recording], now: float) -> list[Recording]:
    """Ended recordings whose expires_at has passed, oldest first."""
    due = [
        r
        for r in recordings
        if r.state in EXPIRABLE and r.expires_at is not None and r.expires_at <= now
    ]
    return sorted(due, key=lambda r: r.expires_at or 0.0)


def lifecycle_days(retention_s: float) -> int:
    """S3 lifecycle rules count whole days; never expire before the catalog says so."""
    return max(1, -(-int(retention_s) // 86400))


class Sweeper:
    def __init__(self, catalog: Catalog, store: ObjectStore, clock: Callable[[], float]) -> None:
        self.catalog = catalog
        self.store = store
        self.clock = clock

    async def sweep(self) -> list[str]:
        """Delete every recording due now; returns the ids expired."""
        now = self.clock()
        expired = []
        for rec in due_for_expiry(self.catalog.due(EXPIRABLE, now), now):
            try:
                deleted = await self.store.delete_prefix(rec.prefix)
            except StoreError as exc:
                # Left as is: the next sweep tries again.
                log.warning("sweep: cannot delete", extra=kv(id=rec.id, error=str(exc)))
                continue
            self.catalog.put(transition(rec, "expired"))
            log.info("recording expired", extra=kv(id=rec.id, objects=deleted))
            expired.append(rec.id)
        return expired
