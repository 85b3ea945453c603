"""Files only this user may read: the secret, the chat and recording databases."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create `path` (and parents) 0700 if missing; an existing directory is left as is."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def private_file(path: Path) -> Path:
    """Make sure `path` exists, created 0600 (SQLite gives its -wal/-shm files the mode of
    the database file, so they follow). An existing file is narrowed to 0600 too."""
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    return path
