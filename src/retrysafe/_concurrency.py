"""The few primitives whose sync and async forms differ by more than `await`.

The async store modules are the source; `scripts/unasync.py` generates the sync ones, mapping
each async name here to its sync twin (`asleep` to `sleep`, `AsyncGate` to `Gate`). Both are
written by hand, side by side, so they cannot drift: sleeping, a gate that bounds how many
holders run at once (an anyio semaphore, a threading one), and the wake-ups of waiters in this
process (anyio events, threading events, shared by threads).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import anyio

__all__ = [
    "AsyncGate",
    "AsyncWakeups",
    "Gate",
    "Wakeups",
    "asleep",
    "cancelling",
    "monotonic",
    "raise_if_cancelled",
    "sleep",
]

monotonic = time.monotonic


class _Event(Protocol):
    def set(self) -> None: ...


EventT = TypeVar("EventT", bound=_Event)


async def asleep(seconds: float) -> None:
    """Sleep without blocking the event loop."""
    await anyio.sleep(seconds)


def sleep(seconds: float) -> None:
    """Sleep the calling thread."""
    time.sleep(seconds)


def raise_if_cancelled() -> None:
    """Raise the cancellation of this asyncio task if a call under it swallowed it: psycopg
    cancels the query and raises an `OperationalError` instead, and redis-py 8 sometimes returns
    the reply. asyncio cancels a task once, so a loop of such calls (a renewal, a held outcome's
    retries) would otherwise go on after its task was cancelled, and whoever waits for it to end
    would wait for ever."""
    if cancelling():
        raise asyncio.CancelledError


def cancelling() -> int:
    """Return how many cancellations of this asyncio task are pending (`Task.cancelling`);
    0 outside an asyncio task (trio delivers a cancellation at every checkpoint)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return 0
    return 0 if task is None else task.cancelling()


class AsyncGate:
    """At most `size` holders at once; entering waits up to a timeout (async face)."""

    def __init__(self, size: int) -> None:
        self._semaphore = anyio.Semaphore(size)

    async def enter(self, timeout: float) -> bool:
        """Take a place, waiting at most `timeout` seconds; return whether one was taken."""
        with anyio.move_on_after(timeout):
            await self._semaphore.acquire()
            return True
        return False

    def leave(self) -> None:
        """Give a place back."""
        self._semaphore.release()


class Gate:
    """At most `size` holders at once, across threads (sync face, as `AsyncGate`)."""

    def __init__(self, size: int) -> None:
        self._semaphore = threading.BoundedSemaphore(size)

    def enter(self, timeout: float) -> bool:
        """Take a place, waiting at most `timeout` seconds; return whether one was taken."""
        return self._semaphore.acquire(timeout=timeout)

    def leave(self) -> None:
        """Give a place back."""
        self._semaphore.release()


class _Waiters(Generic[EventT]):
    """Waiters of this process on keys, each with an event set when its key is woken.

    A waiter watches a key before it reads what the key stands for, so a change right after the
    read wakes it; a change made elsewhere (another process) is the waiter's to poll for. The
    bookkeeping of both faces: the sync one is shared by threads, hence the lock.
    """

    def __init__(self, new_event: Callable[[], EventT]) -> None:
        self._new_event = new_event
        self._waiting: dict[str, set[EventT]] = {}
        self._lock = threading.Lock()

    def watch(self, key: str) -> EventT:
        """Return an event set when `key` is woken; `unwatch` it when done waiting."""
        event = self._new_event()
        with self._lock:
            self._waiting.setdefault(key, set()).add(event)
        return event

    def unwatch(self, key: str, event: EventT) -> None:
        """Stop watching `key` with `event`."""
        with self._lock:
            events = self._waiting.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[key]

    def wake(self, key: str) -> None:
        """Wake every waiter on `key` (cheap when there is none)."""
        if not self._waiting:  # no lock for the common case: nobody waits anywhere
            return
        with self._lock:
            events = self._waiting.pop(key, ())
        for event in events:
            event.set()


class AsyncWakeups(_Waiters[anyio.Event]):
    """Waiters of this process on keys, woken by `wake` (async face: anyio events)."""

    def __init__(self) -> None:
        super().__init__(anyio.Event)

    @staticmethod
    async def until(event: anyio.Event, seconds: float) -> None:
        """Wait for `event`, at most `seconds`."""
        with anyio.move_on_after(seconds):
            await event.wait()


class Wakeups(_Waiters[threading.Event]):
    """Waiters of this process on keys, across threads (sync face, as `AsyncWakeups`)."""

    def __init__(self) -> None:
        super().__init__(threading.Event)

    @staticmethod
    def until(event: threading.Event, seconds: float) -> None:
        """Wait for `event`, at most `seconds`."""
        event.wait(seconds)
