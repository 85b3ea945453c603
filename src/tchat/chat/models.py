"""Chat messages and the frames of the WebSocket protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from tchat.rooms import ROOM_PATTERN

__all__ = ["ROOM_PATTERN", "HistoryPage", "Message", "MessageOut"]


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    room: str
    author: str
    text: str
    created_at: float  # Unix seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "room": self.room,
            "author": self.author,
            "text": self.text,
            "created_at": self.created_at,
        }


class MessageOut(BaseModel):
    id: str = Field(description="Time-sortable unique id (decimal string of a 64-bit snowflake).")
    room: str
    author: str
    text: str
    created_at: float = Field(description="Unix seconds.")


class HistoryPage(BaseModel):
    messages: list[MessageOut] = Field(description="Newest first.")
    next_before: str | None = Field(
        description="Pass as `before` to get the next (older) page; null at the end."
    )
