"""The chat store: the ChatStore protocol and its errors (base.py); backends `sqlite`
(embedded) and `cql` (ScyllaDB/Cassandra), chosen by CHAT_STORE."""

from __future__ import annotations

from tchat.chat.store.base import (
    ChatStore,
    IdTaken,
    StoreBusy,
    StoreUnavailable,
)

__all__ = [
    "ChatStore",
    "IdTaken",
    "StoreBusy",
    "StoreUnavailable",
    "make_store",
]


def make_store(settings: object) -> ChatStore:
    from tchat.config import Settings

    assert isinstance(settings, Settings)
    if settings.chat_store == "cql":
        from tchat.chat.cql import CqlChatStore

        return CqlChatStore.from_settings(settings)
    from tchat.chat.sqlite import SqliteChatStore

    return SqliteChatStore(settings.data_dir / "chat.sqlite3", ttl_s=settings.chat_ttl)
