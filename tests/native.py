"""The native fan-out in tests: wherever it can be built it must be (`make native`)."""

from __future__ import annotations

import os
import shutil

import pytest

from tchat.sfu import fastpath


def require_native() -> None:
    """Not built on a machine with cargo fails; only a machine without Rust skips, and
    says so (the Python path's tests still run there)."""
    path = fastpath.choose("auto")
    if path.module is None:
        if shutil.which("cargo") or os.access(os.path.expanduser("~/.cargo/bin/cargo"), os.X_OK):
            pytest.fail(f"cargo is here but the native fan-out is not built: {path.why}")
        pytest.skip(f"no Rust toolchain on this machine: {path.why}")
