"""Progress of long runs: a rich bar on a terminal, plain lines in CI and logs."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.progress import BarColumn, TaskID, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """`with Progress("chat writers", total=60) as p: p.update(done, "41k msg/s")`."""

    def __init__(
        self, label: str, total: float, interactive: bool | None = None, every_s: float = 5.0
    ) -> None:
        self.label = label
        self.total = total
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.every_s = every_s
        self._last = 0.0
        self._rich: RichProgress | None = None
        self._task = TaskID(0)

    def __enter__(self) -> Progress:
        if self.interactive:
            self._rich = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=self.total, info="")
        return self

    def update(self, done: float, info: str = "") -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=done, info=info)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            print(f"[{self.label}] {done:.0f}/{self.total:.0f} {info}", file=sys.stderr, flush=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._rich is not None:
            self._rich.stop()
