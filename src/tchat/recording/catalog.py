"""The recordings catalog: a state machine (pure) and its SQLite home.

States: recording → finalizing → available | failed; available/failed → expired.
A recording can fail straight from `recording` (no media, FFmpeg gave up), and a
failed one whose segments still wait on disk goes back to `finalizing` when a later
process resumes their upload (resume.py). The transition table is the only place
that says what may follow what.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from tchat.files import private_file

State = Literal["recording", "finalizing", "available", "failed", "expired"]
STATES: tuple[str, ...] = get_args(State)

TRANSITIONS: dict[str, frozenset[str]] = {
    "recording": frozenset({"finalizing", "failed"}),
    "finalizing": frozenset({"available", "failed"}),
    "available": frozenset({"expired"}),
    "failed": frozenset({"finalizing", "expired"}),
    "expired": frozenset(),
}


class TransitionError(ValueError):
    """A state change the table does not allow (a bug in the caller)."""


class UnknownRecording(KeyError):
    """No recording has that id."""


@dataclass(frozen=True, slots=True)
class Recording:
    id: str
    room: str
    state: State
    started_at: float
    ended_at: float | None = None
    duration_s: float = 0.0
    segment_count: int = 0
    size_bytes: int = 0
    expires_at: float | None = None
    detail: str = ""  # what happened: failure reason, restarts, segments not stored

    @property
    def prefix(self) -> str:
        return f"recordings/{self.id}/"

    @property
    def playlist_key(self) -> str:
        return self.prefix + "index.m3u8"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def transition(rec: Recording, state: State, **changes: Any) -> Recording:
    """rec moved to state with changes applied; TransitionError if not allowed."""
    if state != rec.state and state not in TRANSITIONS[rec.state]:
        raise TransitionError(f"recording {rec.id}: {rec.state} → {state} is not allowed")
    return replace(rec, state=state, **changes)


def ended(
    rec: Recording, state: State, ended_at: float, retention_s: float, **changes: Any
) -> Recording:
    """Close a recording: ended_at set and expires_at = end + retention."""
    return transition(rec, state, ended_at=ended_at, expires_at=ended_at + retention_s, **changes)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
  id TEXT PRIMARY KEY,
  room TEXT NOT NULL,
  state TEXT NOT NULL,
  started_at REAL NOT NULL,
  ended_at REAL,
  duration_s REAL NOT NULL DEFAULT 0,
  segment_count INTEGER NOT NULL DEFAULT 0,
  size_bytes INTEGER NOT NULL DEFAULT 0,
  expires_at REAL,
  detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS recordings_room ON recordings(room, started_at);
CREATE INDEX IF NOT EXISTS recordings_expiry ON recordings(state, expires_at);
"""
_COLUMNS = (
    "id",
    "room",
    "state",
    "started_at",
    "ended_at",
    "duration_s",
    "segment_count",
    "size_bytes",
    "expires_at",
    "detail",
)


class Catalog:
    """Recordings in one SQLite file (WAL, so `tchat serve` reads while a recorder writes).

    Calls are short single-row statements; they run inline on the caller's thread.
    """

    def __init__(self, path: Path) -> None:
        private_file(path)  # 0600, like the secret
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, rec: Recording) -> Recording:
        values = [getattr(rec, c) for c in _COLUMNS]
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO recordings ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                values,
            )
            self._db.commit()
        return rec

    def get(self, rec_id: str) -> Recording:
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM recordings WHERE id = ?", (rec_id,)
            ).fetchone()
        if row is None:
            raise UnknownRecording(rec_id)
        return Recording(*row)

    def due(self, states: tuple[str, ...], now: float, limit: int = 1000) -> list[Recording]:
        """Recordings in `states` whose expires_at has passed, the longest overdue first."""
        marks = ", ".join("?" for _ in states)
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM recordings WHERE state IN ({marks}) "
            "AND expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, [*states, now, limit]).fetchall()
        return [Recording(*row) for row in rows]

    def list(
        self, *, room: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[Recording]:
        where, args = [], []
        if room is not None:
            where.append("room = ?")
            args.append(room)
        if state is not None:
            if state not in STATES:
                raise ValueError(f"state must be one of {', '.join(STATES)}")
            where.append("state = ?")
            args.append(state)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM recordings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [Recording(*row) for row in rows]
