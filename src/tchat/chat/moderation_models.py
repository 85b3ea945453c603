"""What chat moderation stores: state rows, log entries, tombstoned messages.

A room's moderation state is a handful of keyed rows (one partition / one index
range per room), each carrying the id of the action that wrote it as its version:

    slow_mode          value = seconds between two posts of one author (0 = off)
    cleared            value = message id; every message up to it is hidden
    role:<identity>    kind = publisher | moderator (who outranks whom)
    restrict:<identity> kind = ban | timeout | lifted, until = end of a timeout

The stores keep them; `tchat.chat.moderation` holds them in memory per room and
applies a row only if its version is not older than the one it has, so replays and
late bus deliveries are harmless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tchat.chat.models import Message

SLOW_MODE = "slow_mode"
CLEARED = "cleared"
ROLE = "role:"
RESTRICT = "restrict:"


@dataclass(frozen=True, slots=True)
class StateRow:
    room: str
    key: str
    kind: str = ""
    value: int = 0
    until: float | None = None  # Unix s; a timeout's end
    by: str = ""
    at: float = 0.0  # Unix s
    version: int = 0  # id of the action that wrote the row

    def to_json(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "key": self.key,
            "kind": self.kind,
            "value": str(self.value),
            "until": self.until,
            "by": self.by,
            "at": self.at,
            "version": str(self.version),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> StateRow:
        return cls(
            room=str(obj["room"]),
            key=str(obj["key"]),
            kind=str(obj.get("kind", "")),
            value=int(obj.get("value", 0)),
            until=None if obj.get("until") is None else float(obj["until"]),
            by=str(obj.get("by", "")),
            at=float(obj.get("at", 0.0)),
            version=int(obj.get("version", 0)),
        )


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One moderation action as the room's log shows it."""

    id: int  # snowflake: time-ordered, unique across instances
    room: str
    actor: str
    actor_role: str  # broadcaster | moderator
    action: str  # delete | timeout | ban | unban | slow_mode | clear
    target: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0  # Unix s

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "room": self.room,
            "actor": self.actor,
            "actor_role": self.actor_role,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "created_at": self.created_at,
        }

    def detail_text(self) -> str:
        return json.dumps(self.detail, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A stored message with its tombstone, if deleted."""

    message: Message
    deleted_by: str | None = None
    deleted_at: float | None = None
    ttl_s: int | None = None  # seconds the row still lives (CQL), for the tombstone's TTL

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None
