"""How a Redis waiter bounds its own calls by its deadline (`_async/redis_waits.py`).

A wait must end when its timeout does (B15), but a read on a frozen or stalled Redis waits for
the client's `socket_timeout`, which may be longer. So each call of a wait goes through a cutoff:
`call(seconds, function)` returns what `function()` returns, or `CUT` if it has not returned
within `seconds`. `AsyncCutoff` cancels the call (the store's executors give a cancelled call's
connection up, or leave its command to run in its batch); `Cutoff`, the sync face's twin (named
so that the generated sync waiter finds it), runs the calls on a thread of the wait's own and
stops waiting for one that is late: that call ends by itself within the socket timeout, and the
wait's cleanup runs after it, on that thread, so nothing uses the pub/sub connection under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from typing import Final, TypeVar

__all__ = ["CUT", "AsyncCutoff", "Cut", "Cutoff"]

T = TypeVar("T")


class Cut:
    """The type of `CUT`: a call that did not return within its time."""

    __slots__ = ()


CUT: Final = Cut()


class AsyncCutoff:
    """Cancel a call that has not returned within its time (async face)."""

    __slots__ = ()

    async def call(self, seconds: float, function: Callable[[], Awaitable[T]]) -> T | Cut:
        """Return `await function()`, or `CUT` once `seconds` have passed without it."""
        scope = asyncio.timeout(max(seconds, 0.0))
        try:
            async with scope:
                return await function()
        except TimeoutError:
            if scope.expired():
                return CUT
            raise

    async def aclose(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run `cleanup` now: a cancelled call has ended already."""
        await cleanup()


class Cutoff:
    """Stop waiting for a call that has not returned within its time (sync face): the calls run
    on a thread of this cutoff's own, started by the first."""

    __slots__ = ("_late", "_thread")

    def __init__(self) -> None:
        self._thread: ThreadPoolExecutor | None = None
        self._late = False

    def call(self, seconds: float, function: Callable[[], T]) -> T | Cut:
        """Return `function()`, or `CUT` once `seconds` have passed without it (it runs on)."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="retrysafe-redis-wait")
        future = self._thread.submit(function)
        if not wait_for_futures((future,), timeout=max(seconds, 0.0)).done:
            self._late = True
            return CUT
        return future.result()

    def close(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` now, or, should a call be late, on its thread once it has ended."""
        thread = self._thread
        try:
            if thread is None or not self._late:
                cleanup()
            else:
                thread.submit(cleanup)
        finally:
            if thread is not None:
                thread.shutdown(wait=False)
