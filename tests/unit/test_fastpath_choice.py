"""SFU_FASTPATH: which fan-out runs, and what it says when it cannot."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from tchat.sfu import fastpath


def _without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> ModuleType:
        if name == fastpath.MODULE:
            raise ImportError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(fastpath.importlib, "import_module", fake)


def test_python_is_always_there() -> None:
    path = fastpath.choose("python")
    assert not path.native and path.describe() == "python (SFU_FASTPATH=python)"


def test_auto_falls_back_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_native(monkeypatch)
    path = fastpath.choose("auto")
    assert not path.native
    assert "not built" in path.describe() and "make native" in path.describe()


def test_native_not_built_is_an_error_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_native(monkeypatch)
    with pytest.raises(RuntimeError, match=r"SFU_FASTPATH=native.*make native"):
        fastpath.choose("native")


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, native, python"):
        fastpath.choose("fast")
