"""The ChatStore protocol; backends: `sqlite` (embedded) and `cql` (ScyllaDB/Cassandra)."""

from __future__ import annotations

from typing import Protocol

from tchat.chat.models import Message


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

    async def history(self, room: str, limit: int, before: int | None = None) -> list[Message]:
        """Newest first, ids < before when given; raise StoreUnavailable."""

    async def healthy(self) -> bool: ...


def make_store(settings: object) -> ChatStore:
    from tchat.config import Settings

    assert isinstance(settings, Settings)
    if settings.chat_store == "cql":
        from tchat.chat.cql import CqlChatStore

        return CqlChatStore.from_settings(settings)
    from tchat.chat.sqlite import SqliteChatStore

    return SqliteChatStore(settings.data_dir / "chat.sqlite3", ttl_s=settings.chat_ttl)
