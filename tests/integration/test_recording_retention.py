"""The sweeper against both real stores, with an injected clock."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tchat.recording.catalog import Catalog, Recording, ended
from tchat.recording.retention import Sweeper
from tchat.storage import ObjectStore, StoreError
from tchat.storage.s3 import S3Store

DAY = 86400.0


async def stored_recording(object_store: ObjectStore, catalog: Catalog, end: float) -> Recording:
    rec = Recording(uuid.uuid4().hex[:16], "room", "recording", started_at=end - 60)
    for name in ("seg_00000.ts", "seg_00001.ts", "index.m3u8"):
        await object_store.put_bytes(rec.prefix + name, b"x")
    return catalog.put(ended(rec, "failed", end, 30 * DAY, segment_count=2))


async def test_sweeper_deletes_only_what_is_due(object_store: ObjectStore, tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    old = await stored_recording(object_store, catalog, end=1000.0)
    young = await stored_recording(object_store, catalog, end=1000.0 + DAY)
    assert await Sweeper(catalog, object_store, lambda: 1000.0 + 30 * DAY - 1).sweep() == []
    assert len(await object_store.list(old.prefix)) == 3

    expired = await Sweeper(catalog, object_store, lambda: 1000.0 + 30 * DAY).sweep()
    assert expired == [old.id]
    assert await object_store.list(old.prefix) == []
    assert catalog.get(old.id).state == "expired"
    assert (
        len(await object_store.list(young.prefix)) == 3 and catalog.get(young.id).state == "failed"
    )
    # Sweeping again is a no-op: expired recordings are not swept twice.
    assert await Sweeper(catalog, object_store, lambda: 1000.0 + 30 * DAY).sweep() == []
    catalog.close()


async def test_sweeper_leaves_the_row_when_storage_is_down(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    rec = catalog.put(ended(Recording("r1", "room", "recording", 0.0), "failed", 10.0, DAY))
    dead = S3Store("http://127.0.0.1:9", "tchat-it", max_attempts=1, connect_timeout_s=0.3)
    with pytest.raises(StoreError):
        await dead.list(rec.prefix)
    assert await Sweeper(catalog, dead, lambda: 10.0 + 2 * DAY).sweep() == []
    assert catalog.get("r1").state == "failed"  # retried on the next sweep
    await dead.close()
    catalog.close()
