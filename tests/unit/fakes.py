"""Fakes shared by unit tests: a clock they move by hand."""

from __future__ import annotations


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
