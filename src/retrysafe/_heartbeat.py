"""Lease renewal while an operation runs (B16): thread schedulers, and one async renewer.

Every face renews the same way: a third of the lease after the operation started, then every
third of it, until the operation ends or the claim is found taken over. `renew` is a callable
that renews once and returns whether to go on (False once fenced); the flow supplies it.

    beat = THREADS.start(every(interval, renew), interval)  # sync: one shared daemon thread
    ...
    THREADS.stop(beat)                                      # waits for a renewal in progress

    beat = AsyncHeartbeat(renew, interval)                  # async callers
    await beat.start()
    ...
    await beat.stop()                                       # likewise

A short operation pays for a dict insert and delete (threads) or a timer handle (asyncio), never
for a thread or a task of its own. After `os.fork`, the child forgets the parent's thread.
`HOLDER`, a second scheduler thread, runs the retries of outcomes the store did not take (B19,
`retrysafe._flow.holding`), so a store that hangs on them never delays a running renewal.
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

__all__ = ["HOLDER", "THREADS", "AsyncHeartbeat", "ThreadJob", "ThreadScheduler", "every"]

_IDLE_WAKE: Final = 60.0


class ThreadJob:
    """One job the thread scheduler runs when due: `step()` returns the seconds until its next
    step, or None when it is done."""

    __slots__ = ("_lock", "_stopped", "due", "step")

    def __init__(self, step: Callable[[], float | None], delay: float) -> None:
        self.step = step
        self.due = monotonic() + delay
        self._lock = threading.Lock()
        self._stopped = False

    def run(self) -> bool:
        """Run one step unless stopped; return whether to keep the job."""
        with self._lock:
            if self._stopped:
                return False
            delay = self.step()
            if delay is None:
                return False
        self.due = monotonic() + delay
        return True

    def halt(self) -> None:
        """Stop; once this returns, no step is running or will run."""
        with self._lock:
            self._stopped = True


def every(interval: float, renew: Callable[[], bool]) -> Callable[[], float | None]:
    """Return a job step that calls `renew` every `interval` seconds until it returns False."""
    return lambda: interval if renew() else None


class ThreadScheduler:
    """One daemon thread per process that runs jobs when they are due.

    It sleeps until the earliest job is due, so a new job needs a wake-up only if it is due
    before every other. Jobs run one after another: a job that blocks (a store call that
    times out) delays the others, which is why held outcomes (B19) have a thread of their own
    and never hold up the renewals of running operations.

    Args:
        name: the thread's name.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._jobs: dict[int, ThreadJob] = {}
        self._thread: threading.Thread | None = None
        self._next_wake = float("inf")

    def start(self, step: Callable[[], float | None], delay: float) -> ThreadJob:
        """Run `step` `delay` seconds from now, then as often as it asks."""
        job = ThreadJob(step, delay)
        with self._cond:
            self._jobs[id(job)] = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if job.due < self._next_wake:
                self._cond.notify()
        return job

    def wake(self, job: ThreadJob) -> None:
        """Make `job` due now (a drain wants its next step at once)."""
        with self._cond:
            job.due = monotonic()
            self._cond.notify()

    def stop(self, job: ThreadJob) -> None:
        """Stop running `job`; a step in progress finishes first."""
        with self._cond:
            self._jobs.pop(id(job), None)
        job.halt()

    def _run(self) -> None:
        while True:
            with self._cond:
                now = monotonic()
                due = [job for job in self._jobs.values() if job.due <= now]
                if not due:
                    self._next_wake = min(
                        (job.due for job in self._jobs.values()), default=now + _IDLE_WAKE
                    )
                    self._cond.wait(self._next_wake - now)
                    continue
                self._next_wake = now
            for job in due:
                if not job.run():
                    with self._cond:
                        self._jobs.pop(id(job), None)

    def after_fork(self) -> None:
        """In a forked child, forget the parent's thread and jobs."""
        self._cond = threading.Condition()
        self._jobs = {}
        self._thread = None
        self._next_wake = float("inf")


THREADS: Final = ThreadScheduler("retrysafe-heartbeat")
"""Renews the leases of running sync operations."""
HOLDER: Final = ThreadScheduler("retrysafe-holder")
"""Renews the leases of held outcomes (B19) and retries storing them."""
os.register_at_fork(after_in_child=THREADS.after_fork)
os.register_at_fork(after_in_child=HOLDER.after_fork)


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
