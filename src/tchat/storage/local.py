"""A local directory as object store (the embedded default).

Objects are plain files so `tchat serve` can hand them to the client with
sendfile; their content type and cache header live in a dot-file beside them
(`.name.meta`), which keys can never name. Writes go to a temp file and are
renamed, so a reader never sees half an object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tchat.storage.base import (
    LifecycleResult,
    NotFound,
    ObjectInfo,
    StoreError,
    cache_control_for,
    content_type_for,
    validate_key,
    validate_prefix,
)


class LocalStore:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    async def open(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    def path_of(self, key: str) -> Path:
        """The file holding key (validated; it may not exist)."""
        return self.root / validate_key(key)

    def _meta_path(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.meta")

    def _write(self, key: str, data: bytes, content_type: str | None, cache_control: str) -> None:
        path = self.path_of(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            meta = {
                "content_type": content_type or content_type_for(key),
                "cache_control": cache_control or cache_control_for(key, data),
            }
            # Meta first: a reader that sees the object always finds its headers.
            _atomic_write(self._meta_path(path), json.dumps(meta).encode())
            _atomic_write(path, data)
        except OSError as exc:
            raise StoreError(f"local store: cannot write {key}: {exc}") from exc

    async def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None, cache_control: str = ""
    ) -> None:
        await asyncio.to_thread(self._write, key, data, content_type, cache_control)

    async def put_file(
        self, key: str, path: Path, *, content_type: str | None = None, cache_control: str = ""
    ) -> int:
        def copy() -> int:
            data = path.read_bytes()
            self._write(key, data, content_type, cache_control)
            return len(data)

        return await asyncio.to_thread(copy)

    def _info(self, key: str, path: Path) -> ObjectInfo:
        try:
            meta = json.loads(self._meta_path(path).read_bytes())
        except (OSError, ValueError):
            meta = {}
        return ObjectInfo(
            key=key,
            size=path.stat().st_size,
            content_type=meta.get("content_type") or content_type_for(key),
            cache_control=meta.get("cache_control") or cache_control_for(key),
        )

    def head_sync(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        try:
            return self._info(key, path) if path.is_file() else None
        except FileNotFoundError:
            return None

    async def head(self, key: str) -> ObjectInfo | None:
        return await asyncio.to_thread(self.head_sync, key)

    async def get(self, key: str) -> bytes:
        path = self.path_of(key)

        def read() -> bytes:
            try:
                return path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise NotFound(key) from None
            except OSError as exc:
                raise StoreError(f"local store: cannot read {key}: {exc}") from exc

        return await asyncio.to_thread(read)

    def _list(self, prefix: str) -> list[ObjectInfo]:
        validate_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                try:
                    out.append(self._info(key, path))
                except FileNotFoundError:  # deleted while listing
                    continue
        return sorted(out, key=lambda info: info.key)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)

    def _delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete the whole store; give a prefix")
        count = len(self._list(prefix))
        base = self.root / prefix
        try:
            shutil.rmtree(base)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StoreError(f"local store: cannot delete {prefix}: {exc}") from exc
        return count

    async def delete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(self._delete_prefix, prefix)

    async def apply_expiration(self, prefix: str, days: int) -> LifecycleResult:
        validate_prefix(prefix)
        return LifecycleResult(
            supported=False,
            verified=False,
            prefix=prefix,
            days=days,
            detail="a local directory has no lifecycle rules; the retention sweeper expires it",
        )


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
