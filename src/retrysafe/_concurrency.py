"""The few primitives whose sync and async forms differ by more than `await`.

The async store modules are the source; `scripts/unasync.py` generates the sync ones, mapping
each async name here to its sync twin (`asleep` to `sleep`, `AsyncThreadRunner` to
`ThreadRunner`). Both families are written by hand, side by side, so they cannot drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

__all__ = ["AsyncThreadRunner", "ThreadRunner", "asleep", "monotonic", "sleep"]

T = TypeVar("T")

monotonic = time.monotonic


async def asleep(seconds: float) -> None:
    """Sleep without blocking the event loop."""
    await anyio.sleep(seconds)


def sleep(seconds: float) -> None:
    """Sleep the calling thread."""
    time.sleep(seconds)


class AsyncThreadRunner:
    """Run blocking calls (a SQLite query) in a worker thread, off the event loop."""

    async def run(self, func: Callable[[], T]) -> T:
        """Return `func()`, called in a worker thread."""
        return await anyio.to_thread.run_sync(func)


class ThreadRunner:
    """The sync twin of `AsyncThreadRunner`: the calling thread is already allowed to block."""

    def run(self, func: Callable[[], T]) -> T:
        """Return `func()`, called in this thread."""
        return func()
