"""Small asyncio helpers shared by the capabilities."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel the tasks that exist and wait until every one has finished unwinding.

    Their own exceptions are not re-raised (they are being stopped); a cancellation of
    the caller itself still propagates.
    """
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    if live:
        await asyncio.wait(live)
        for task in live:
            if not task.cancelled():
                task.exception()  # retrieved: no "exception was never retrieved" warning
