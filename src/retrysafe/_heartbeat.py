"""Lease renewal while an operation runs (B16): one thread scheduler, one async renewer.

Every face renews the same way: a third of the lease after the operation started, then every
third of it, until the operation ends or the claim is found taken over. `renew` is a callable
that renews once and returns whether to go on (False once fenced); the flow supplies it.

    beat = THREADS.start(renew, interval)     # sync callers: one shared daemon thread
    ...
    THREADS.stop(beat)                        # waits for a renewal in progress

    beat = AsyncHeartbeat(renew, interval)    # async callers
    await beat.start()
    ...
    await beat.stop()                         # likewise

A short operation pays for a dict insert and delete (threads) or a timer handle (asyncio), never
for a thread or a task of its own. After `os.fork`, the child forgets the parent's thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import anyio.abc

from retrysafe._concurrency import monotonic

__all__ = ["THREADS", "AsyncHeartbeat", "ThreadBeat", "ThreadHeartbeats"]

_IDLE_WAKE: Final = 60.0


class ThreadBeat:
    """One operation whose lease the thread scheduler renews."""

    __slots__ = ("_lock", "_stopped", "due", "interval", "renew")

    def __init__(self, renew: Callable[[], bool], interval: float) -> None:
        self.renew = renew
        self.interval = interval
        self.due = monotonic() + interval
        self._lock = threading.Lock()
        self._stopped = False

    def beat(self) -> bool:
        """Renew once unless stopped; return whether to keep renewing."""
        with self._lock:
            if self._stopped or not self.renew():
                return False
        self.due = monotonic() + self.interval
        return True

    def halt(self) -> None:
        """Stop; once this returns, no renewal is running or will run."""
        with self._lock:
            self._stopped = True


class ThreadHeartbeats:
    """One daemon thread per process that renews every running operation's lease when due.

    It sleeps until the earliest renewal is due, so a new operation (due a third of its lease
    from now) needs a wake-up only if it is due before every other.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._beats: dict[int, ThreadBeat] = {}
        self._thread: threading.Thread | None = None
        self._next_wake = float("inf")

    def start(self, renew: Callable[[], bool], interval: float) -> ThreadBeat:
        """Call `renew` every `interval` seconds, the first time `interval` from now."""
        beat = ThreadBeat(renew, interval)
        with self._cond:
            self._beats[id(beat)] = beat
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="retrysafe-heartbeat", daemon=True
                )
                self._thread.start()
            if beat.due < self._next_wake:
                self._cond.notify()
        return beat

    def stop(self, beat: ThreadBeat) -> None:
        """Stop renewing `beat`; a renewal in progress finishes first."""
        with self._cond:
            self._beats.pop(id(beat), None)
        beat.halt()

    def _run(self) -> None:
        while True:
            with self._cond:
                now = monotonic()
                due = [beat for beat in self._beats.values() if beat.due <= now]
                if not due:
                    self._next_wake = min(
                        (beat.due for beat in self._beats.values()), default=now + _IDLE_WAKE
                    )
                    self._cond.wait(self._next_wake - now)
                    continue
                self._next_wake = now
            for beat in due:
                if not beat.beat():
                    with self._cond:
                        self._beats.pop(id(beat), None)

    def after_fork(self) -> None:
        """In a forked child, forget the parent's thread and operations."""
        self._cond = threading.Condition()
        self._beats = {}
        self._thread = None
        self._next_wake = float("inf")


THREADS: Final = ThreadHeartbeats()
os.register_at_fork(after_in_child=THREADS.after_fork)


async def _renew_every(renew: Callable[[], Awaitable[bool]], interval: float) -> None:
    while await renew():  # noqa: ASYNC110 - a periodic renewal, not a wait for an event
        await anyio.sleep(interval)


class AsyncHeartbeat:
    """The lease renewal of one async operation.

    On asyncio a timer fires `interval` after `start`; only if the operation still runs then
    does a renewing task start, so a short operation never creates a task. On another event
    loop (trio) a task in a task group renews beside the operation.
    """

    __slots__ = ("_group", "_interval", "_renew", "_task", "_timer")

    def __init__(self, renew: Callable[[], Awaitable[bool]], interval: float) -> None:
        self._renew = renew
        self._interval = interval
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._group: anyio.abc.TaskGroup | None = None

    async def start(self) -> None:
        """Start renewing: the first renewal is due `interval` from now."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._group = anyio.create_task_group()
            await self._group.__aenter__()
            self._group.start_soon(self._wait_then_renew)
            return
        self._timer = loop.call_later(self._interval, self._start_task, loop)

    async def _wait_then_renew(self) -> None:
        await anyio.sleep(self._interval)
        await _renew_every(self._renew, self._interval)

    def _start_task(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(_renew_every(self._renew, self._interval))

    async def stop(self) -> None:
        """Stop renewing; once this returns, no renewal is running or will run."""
        if self._group is not None:
            self._group.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await self._group.__aexit__(None, None, None)
            return
        if self._timer is not None:
            self._timer.cancel()
        task = self._task
        if task is not None:
            task.cancel()
            # Wait for the renewal to end even if the caller is being cancelled, so it cannot
            # land after the release or completion that follows.
            with anyio.CancelScope(shield=True):
                await asyncio.wait((task,))
