"""Recordings left behind: finish their upload, and the global disk budget.

A recorder notes every closed segment in `DATA_DIR/recorder/<id>/segments.jsonl`
(its key, file, duration, program date time, discontinuity; or why it was lost) and
deletes a segment's file once it is stored. So after the process was killed, or when
storage was still down 30 s after a stream ended, the manifest plus the files still
on disk say exactly what remains: `Resumer` uploads those files in order, then the
final playlist (VOD + ENDLIST, every segment of the manifest), and marks the
recording available — or failed, saying why, if segments were lost.

`DiskBudget` bounds what all recordings together keep on disk waiting for storage
(`RECORDING_DISK_BUDGET_BYTES`), on top of each recording's own cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tchat.logs import kv
from tchat.recording.catalog import Catalog, Recording, State, ended, transition
from tchat.recording.playlist import Playlist, Segment, parse_pdt, render, target_duration_for
from tchat.recording.uploader import Uploader
from tchat.recording.uploadqueue import UploadJob, UploadQueue
from tchat.storage import ObjectInfo, ObjectStore, StoreError

log = logging.getLogger("tchat.recording.resume")

MANIFEST = "segments.jsonl"


@dataclass(frozen=True, slots=True)
class Entry:
    n: int
    key: str
    file: str = ""  # relative to the recording's working directory
    duration: float = 0.0
    pdt: datetime | None = None
    discontinuity: bool = False
    size: int = 0
    lost: str = ""  # why the segment was never kept


@dataclass
class Manifest:
    entries: list[Entry] = field(default_factory=list)

    @property
    def kept(self) -> list[Entry]:
        return [e for e in self.entries if not e.lost]

    @property
    def lost(self) -> list[Entry]:
        return [e for e in self.entries if e.lost]


def read_manifest(text: str) -> Manifest:
    """Parse a manifest; a torn last line (the process died mid-write) is skipped."""
    manifest = Manifest()
    seen: set[int] = set()
    for line in text.splitlines():
        try:
            raw = json.loads(line)
            entry = Entry(
                n=int(raw["n"]),
                key=str(raw["key"]),
                file=str(raw.get("file", "")),
                duration=float(raw.get("duration", 0.0)),
                pdt=parse_pdt(raw["pdt"]) if raw.get("pdt") else None,
                discontinuity=bool(raw.get("disc", False)),
                size=int(raw.get("size", 0)),
                lost=str(raw.get("lost", "")),
            )
        except (ValueError, KeyError, TypeError):
            continue
        if entry.n not in seen:
            seen.add(entry.n)
            manifest.entries.append(entry)
    manifest.entries.sort(key=lambda e: e.n)
    return manifest


def final_playlist(manifest: Manifest, segment_s: float) -> bytes:
    """The finished recording's playlist: every kept segment, a discontinuity after a gap."""
    segments: list[Segment] = []
    gap = False
    for e in manifest.entries:
        if e.lost:
            gap = True
            continue
        name = e.key.rsplit("/", 1)[-1]
        segments.append(Segment(name, e.duration, e.pdt, e.discontinuity or gap))
        gap = False
    pl = Playlist(
        version=6,
        target_duration=target_duration_for([s.duration for s in segments], segment_s),
        playlist_type="VOD",
        independent_segments=True,
        endlist=True,
        segments=segments,
    )
    return render(pl).encode()


class DiskBudget:
    """Bytes of closed segments waiting under `root` (every recording, every process
    sharing the data directory) against `limit`: a new segment beyond it is refused."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit

    def used(self) -> int:
        total = 0
        for path in self.root.glob("*/run-*/*.ts"):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def __call__(self, size: int) -> str | None:
        used = self.used()  # the new segment's file is already among them
        if used <= self.limit:
            return None
        return (
            f"disk budget exceeded: {used} bytes of segments wait for storage in "
            f"{self.root}, over RECORDING_DISK_BUDGET_BYTES={self.limit}"
        )


class Resumer:
    """Finish one recording a previous recorder left: upload what its manifest says is
    still on disk, then the final playlist; mark it available (or failed, and why)."""

    def __init__(
        self,
        rec: Recording,
        workdir: Path,
        store: ObjectStore,
        catalog: Catalog,
        *,
        segment_s: float,
        retention_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rec = rec
        self.workdir = workdir
        self.store = store
        self.catalog = catalog
        self.segment_s = segment_s
        self.retention_s = retention_s
        self.clock = clock
        self.queue = UploadQueue(max_buffer_bytes=1 << 62)  # already on disk
        self.uploader = Uploader(store, self.queue, lambda job, at: None, clock)

    async def run(self) -> Recording:
        manifest = read_manifest((self.workdir / MANIFEST).read_text(errors="replace"))
        pending = [e for e in manifest.kept if (self.workdir / e.file).is_file()]
        rec = self.rec
        if not manifest.kept:  # nothing closed was kept: nothing to make available
            why = rec.detail or "the server stopped before any segment was kept"
            done = ended(rec, "failed", rec.ended_at or self.clock(), self.retention_s, detail=why)
            self.catalog.put(done)
            shutil.rmtree(self.workdir, ignore_errors=True)
            return done
        if rec.state != "finalizing":
            end = rec.ended_at or self._end_of(manifest)
            rec = transition(rec, "finalizing", ended_at=end)
            self.catalog.put(rec)
        log.info(
            "resuming a recording left behind",
            extra=kv(id=rec.id, pending=len(pending), segments=len(manifest.kept)),
        )
        await self._upload(rec, manifest, pending)
        # a kept segment whose file is gone was stored before (the uploader deletes it
        # then): the store says whether that is so
        stored = {o.key for o in await self._listing(rec.prefix)}
        missing = [e for e in manifest.kept if e.key not in stored]
        lost = manifest.lost + missing
        notes = self._notes(manifest, pending, missing)
        state: State = "failed" if lost else "available"
        kept = manifest.kept
        done = ended(
            rec,
            state,
            rec.ended_at or self._end_of(manifest),
            self.retention_s,
            detail="; ".join(notes)[:2000],
            duration_s=round(sum(e.duration for e in kept), 3),
            segment_count=len(kept),
            size_bytes=sum(e.size for e in kept),
        )
        self.catalog.put(done)
        shutil.rmtree(self.workdir, ignore_errors=True)
        log.info("recording resumed", extra=kv(id=rec.id, state=state, segments=len(kept)))
        return done

    async def _upload(self, rec: Recording, manifest: Manifest, pending: list[Entry]) -> None:
        """Store the files still on disk, then the final playlist; wait until all are."""
        for e in pending:
            path = self.workdir / e.file
            self.uploader.submit(
                UploadJob(e.key, "segment", path.stat().st_size, self.clock(), path=path)
            )
        body = final_playlist(manifest, self.segment_s)
        self.uploader.submit(UploadJob(rec.playlist_key, "playlist", len(body), self.clock(),
                                       data=body))  # fmt: skip
        task = asyncio.create_task(self.uploader.run())
        try:
            await self.uploader.drain(float("inf"))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _notes(self, manifest: Manifest, pending: list[Entry], missing: list[Entry]) -> list[str]:
        """What the finished recording's detail says about how it was finished."""
        notes = [f"upload resumed later: {len(pending)} segments stored then"]
        if self.rec.state == "recording":
            notes.insert(0, "the server stopped during this recording")
        elif self.rec.detail:
            notes.append(f"before: {self.rec.detail}")
        if manifest.lost:
            notes.append(f"{len(manifest.lost)} segments lost: {manifest.lost[0].lost}")
        if missing:
            notes.append(f"{len(missing)} segments were neither stored nor kept on disk")
        return notes

    async def _listing(self, prefix: str) -> list[ObjectInfo]:
        delay = 0.25
        while True:
            try:
                return await self.store.list(prefix)
            except (StoreError, OSError) as exc:
                log.warning("listing failed; will retry", extra=kv(prefix=prefix, error=str(exc)))
                await asyncio.sleep(delay)
                delay = min(8.0, delay * 2)

    def _end_of(self, manifest: Manifest) -> float:
        kept = manifest.kept
        if kept and kept[-1].pdt is not None:
            return kept[-1].pdt.timestamp() + kept[-1].duration
        return self.rec.started_at + sum(e.duration for e in kept)
