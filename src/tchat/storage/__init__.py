"""Object storage behind one small protocol: a local directory or any S3 endpoint."""

from __future__ import annotations

from pathlib import Path

from tchat.config import Settings
from tchat.storage.base import (
    LifecycleResult,
    NotFound,
    ObjectInfo,
    ObjectStore,
    StoreError,
    cache_control_for,
    content_type_for,
    validate_key,
)

__all__ = [
    "LifecycleResult",
    "NotFound",
    "ObjectInfo",
    "ObjectStore",
    "StoreError",
    "cache_control_for",
    "content_type_for",
    "local_root",
    "open_store",
    "validate_key",
]


def local_root(settings: Settings) -> Path:
    return settings.data_dir / "objects"


def open_store(settings: Settings) -> ObjectStore:
    """The store STORAGE names (not yet opened: call `await store.open()`)."""
    if settings.storage == "s3":
        from tchat.storage.s3 import S3Store

        return S3Store(
            settings.s3_endpoint,
            settings.s3_bucket,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
        )
    from tchat.storage.local import LocalStore

    return LocalStore(local_root(settings))
