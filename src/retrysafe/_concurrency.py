"""The few primitives whose sync and async forms differ by more than `await`.

The async store modules are the source; `scripts/unasync.py` generates the sync ones, mapping
each async name here to its sync twin (`asleep` to `sleep`). Both are written by hand, side by
side, so they cannot drift.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["asleep", "monotonic", "sleep"]

monotonic = time.monotonic


async def asleep(seconds: float) -> None:
    """Sleep without blocking the event loop."""
    await anyio.sleep(seconds)


def sleep(seconds: float) -> None:
    """Sleep the calling thread."""
    time.sleep(seconds)
