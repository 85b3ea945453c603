"""The ChatStore protocol; backends: `sqlite` (embedded) and `cql` (ScyllaDB/Cassandra)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tchat.chat.models import Message
from tchat.chat.moderation_models import LogEntry, StateRow, StoredMessage


class StoreUnavailable(Exception):
    """The store cannot be reached now; the operation may succeed later."""


class StoreBusy(StoreUnavailable):
    """The store's write queue is full: refused at once (HTTP 503 + Retry-After)."""


class IdTaken(Exception):
    """A message with this room and id is stored already (two writers drew one id): the
    message was NOT stored; the caller posts it again under a fresh id."""


class ChatStore(Protocol):
    name: str

    async def start(self) -> None:
        """Connect and create the schema if missing; never raises for an unreachable store
        (operations raise StoreUnavailable until it is reachable)."""

    async def close(self) -> None: ...

    async def append(self, message: Message) -> None:
        """Return only once the store has the message durably; raise StoreUnavailable
        (StoreBusy when too many writes wait), or IdTaken (never overwrite, never drop)."""

    async def history(
        self, room: str, limit: int, before: int | None = None, after: int | None = None
    ) -> list[Message]:
        """Newest first, ids < before and > after when given, deleted messages left out;
        raise StoreUnavailable."""

    async def healthy(self) -> bool: ...

    async def claim_node(self, moved: Callable[[int], None]) -> int | None:
        """A chat-id node number that no other live writer of this store holds, kept until
        close(); `moved(n)` is called if it had to be re-claimed as n. None: the store
        detects id collisions itself (IdTaken) or cannot tell."""

    # --- moderation (tchat.chat.moderation) ---------------------------------------------
    async def get_message(self, room: str, message_id: int) -> StoredMessage | None:
        """The message `message_id` of `room` with its tombstone; None if not in the room."""

    async def tombstone(self, room: str, messages: list[StoredMessage], by: str, at: float) -> None:
        """Mark messages deleted (who, when); their rows stay."""

    async def put_state(self, row: StateRow, ttl_s: int | None) -> None:
        """Upsert a moderation state row; `ttl_s` = seconds it lives (None: until replaced)."""

    async def load_state(self, room: str) -> list[StateRow]: ...

    async def append_log(self, entry: LogEntry) -> None: ...

    async def read_log(self, room: str, limit: int, before: int | None) -> list[LogEntry]:
        """The room's moderation log, newest first, ids < before when given."""
