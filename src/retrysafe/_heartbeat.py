"""Lease renewal while an operation runs (B16): thread schedulers, and one async renewer.

Every face renews the same way: a third of the lease after the operation started, then every
third of it (a ninth after a failure: `_after`) until the operation ends or the claim is found
taken over. `renew`, the flow's, renews once: it returns True, None if it failed, False if fenced.

    beat = THREADS.start(every(interval, renew), interval)  # sync: one shared daemon thread
    THREADS.stop(beat)                                      # waits for a renewal in progress

    beat = AsyncHeartbeat(renew, interval, watcher)         # async callers
    await beat.start()
    await beat.stop()                                       # likewise

An async heartbeat renews on the event loop: a loop blocked longer than the lease (sync work in
an async handler), or renewals that keep failing, let the lease lapse, and another caller may
take the key over. Its watcher is told (`lapsed`) at the next renewal or as the operation ends.

A short operation pays for a dict insert and delete (threads, and asyncio: one timer per loop),
never for a thread, a task or a timer of its own. After `os.fork`, the child forgets the
parent's thread. `HOLDER`, a second scheduler thread, retries the outcomes the store did not
take (B19, `retrysafe._flow.holding`): a store that hangs on them never delays a renewal.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import anyio

from retrysafe._clock import Clock
from retrysafe._concurrency import monotonic, raise_if_cancelled

__all__ = [
    "HOLDER",
    "MONOTONIC",
    "THREADS",
    "AsyncHeartbeat",
    "ThreadJob",
    "ThreadScheduler",
    "Watcher",
    "every",
]

_IDLE_WAKE: Final = 60.0
_RENEWALS_A_LEASE: Final = 3  # an async heartbeat renews every third of its lease
_TIMER_SLACK: Final = 0.002  # a loop's timer may fire this much before its time (libuv: 1 ms)


class ThreadJob:
    """One job the thread scheduler runs when due: `step()` returns the seconds until its next
    step, or None when it is done."""

    __slots__ = ("_lock", "_stopped", "due", "running", "step")

    def __init__(self, step: Callable[[], float | None], delay: float) -> None:
        self.step = step
        self.due = monotonic() + delay
        self.running = False  # a step is under way on a thread of its own (the scheduler's)
        self._lock = threading.Lock()
        self._stopped = False

    def run(self) -> bool:
        """Run one step unless stopped; return whether to keep the job."""
        with self._lock:
            if self._stopped:
                return False
            delay = self.step()
        if delay is not None:
            self.due = monotonic() + delay
        return delay is not None

    def halt(self) -> None:
        """Stop; once this returns, no step is running or will run."""
        with self._lock:
            self._stopped = True


def every(interval: float, renew: Callable[[], bool | None]) -> Callable[[], float | None]:
    """Return a job step that calls `renew` every `interval` (see `_after`) until fenced."""
    return lambda: _after(renew(), interval)


def _after(renewed: bool | None, interval: float) -> float | None:
    """Seconds to the next renewal: `interval`, a third of it after a failure, None if fenced."""
    return None if renewed is False else interval if renewed else interval / 3


class ThreadScheduler:
    """One daemon thread per process, named `name`, that starts jobs when they are due.

    It sleeps until the earliest job is due, so a new job needs a wake-up only if it is due
    before every other. With no job left, it sleeps for as long as the last job started was to
    wait: a job started after that is due no sooner than the thread wakes, so a stream of short
    operations, each started and stopped before the thread would look, never wakes it (a
    wake-up costs the caller a switch of threads and of the GIL). Each due step runs on a
    daemon thread of its own, one at a time per job: a step that blocks (a renewal on a store
    that hangs until its timeout) delays nothing but its own job, never the renewals of
    operations on other stores or connections, whose leases would lapse meanwhile (B16). Steps
    are rare (a ninth of a lease apart at most), so a thread each costs nothing that matters;
    where none can start (Python 3.12 at exit), a step runs on the scheduler's own thread.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._jobs: dict[int, ThreadJob] = {}
        self._thread: threading.Thread | None = None
        self._next_wake = float("inf")
        self._idle_wake = _IDLE_WAKE

    def start(self, step: Callable[[], float | None], delay: float) -> ThreadJob:
        """Run `step` `delay` seconds from now, then as often as it asks."""
        job = ThreadJob(step, delay)
        with self._cond:
            self._jobs[id(job)] = job
            self._idle_wake = min(max(delay, 0.0), _IDLE_WAKE)
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
                idle = [job for job in self._jobs.values() if not job.running]
                due = [job for job in idle if job.due <= now]
                if not due:
                    self._next_wake = min((job.due for job in idle), default=now + self._idle_wake)
                    self._cond.wait(self._next_wake - now)
                    continue
                self._next_wake = now
                for job in due:
                    job.running = True
            for job in due:
                step = threading.Thread(None, self._step, f"{self._name} step", (job,), daemon=True)
                try:
                    step.start()
                except RuntimeError:  # the interpreter is exiting: 3.12 starts no thread then
                    self._step(job)  # so it runs here, and an exit drain still stores (B40)

    def _step(self, job: ThreadJob) -> None:
        """Run one step of `job` (on a thread of its own), then hand it back to the schedule."""
        keep = False
        try:
            keep = job.run()
        finally:
            with self._cond:
                job.running = False
                if not keep:
                    self._jobs.pop(id(job), None)
                self._cond.notify()  # its next step may be due before the thread would wake

    def after_fork(self) -> None:
        """In a forked child, forget the parent's thread and jobs."""
        self._cond = threading.Condition()
        self._jobs = {}
        self._thread = None
        self._next_wake = float("inf")
        self._idle_wake = _IDLE_WAKE


THREADS: Final = ThreadScheduler("retrysafe-heartbeat")
"""Renews the leases of running sync operations."""
HOLDER: Final = ThreadScheduler("retrysafe-holder")
"""Renews the leases of held outcomes (B19) and retries storing them."""
os.register_at_fork(after_in_child=THREADS.after_fork)
os.register_at_fork(after_in_child=HOLDER.after_fork)


async def _renew_every(renew: Callable[[], Awaitable[bool | None]], interval: float) -> None:
    while (delay := _after(await renew(), interval)) is not None:
        raise_if_cancelled()  # `stop` cancelled it during a store call that kept it quiet
        await anyio.sleep(delay)


class _FirstRenewals:
    """The first renewals due on one asyncio loop, behind one timer for them all.

    A heartbeat's first renewal is due `interval` after it starts; most operations end before
    that, so each one costs a dict insert and delete here instead of a timer handle of its own.
    The timer is armed for the earliest due; when it fires, every heartbeat then due starts its
    renewing task, and it is armed again for the next.
    """

    __slots__ = ("_due", "_timer", "_timer_at", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop  # the loop the renewals run on
        self._due: dict[AsyncHeartbeat, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def add(self, beat: AsyncHeartbeat, interval: float) -> None:
        """Start `beat`'s renewals `interval` seconds from now, unless it is discarded first."""
        at = self.loop.time() + interval
        self._due[beat] = at
        if at < self._timer_at:
            self._arm(at)

    def discard(self, beat: AsyncHeartbeat) -> None:
        """Forget `beat` if its renewals have not started."""
        self._due.pop(beat, None)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(at, self._fire)
        self._timer_at = at

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self.loop.time() + _TIMER_SLACK
        later = math.inf
        for beat, at in list(self._due.items()):
            if at <= now:
                del self._due[beat]
                beat.start_renewing(self.loop)
            elif at < later:
                later = at
        if later < math.inf:
            self._arm(later)


_LOOP_RENEWALS = threading.local()  # the `_FirstRenewals` of the loop this thread last ran


def _first_renewals(loop: asyncio.AbstractEventLoop) -> _FirstRenewals:
    renewals: _FirstRenewals | None = getattr(_LOOP_RENEWALS, "renewals", None)
    if renewals is None or renewals.loop is not loop:
        renewals = _LOOP_RENEWALS.renewals = _FirstRenewals(loop)
    return renewals


class Watcher(Protocol):
    """Who an async heartbeat tells of a lease gone unrenewed longer than itself."""

    def lapsed(self, unrenewed: float) -> None:
        """The lease went `unrenewed` seconds without a renewal."""


class _Monotonic:
    """The default clock of a heartbeat's lease: `time.monotonic`."""

    now = staticmethod(monotonic)


MONOTONIC: Final[Clock] = _Monotonic()


class AsyncHeartbeat:
    """The lease renewal of one async operation.

    On asyncio the first renewal is due `interval` after `start` (`_FirstRenewals`, one timer
    per loop); only if the operation still runs then does a renewing task start, so a short
    operation creates neither a task nor a timer. On another event loop (trio) a system task
    renews beside the operation: in no cancel scope of the caller's, which may stop it from
    another scope (`run_to_end`'s shield) or another task.

    A lease is `_RENEWALS_A_LEASE` intervals long. It goes unrenewed longer than itself when
    what runs the renewals is held up (an event loop blocked by sync work in an async handler,
    a paused process) or when they keep failing: counted on `clock` from the claim (`start`) or
    the start of the last renewal that landed, past the lease `watcher.lapsed` is called with
    those seconds, once until a renewal lands again, before a renewal or as the operation ends
    (`unwatch`, `stop`, `abandon`). A short operation pays one clock read for it, at its end.
    """

    __slots__ = (
        "_beside",
        "_clock",
        "_interval",
        "_lease",
        "_renew",
        "_renewals",
        "_since",
        "_task",
        "_watcher",
    )

    def __init__(
        self,
        renew: Callable[[], Awaitable[bool | None]],
        interval: float,
        watcher: Watcher | None = None,
        *,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._renew = renew
        self._interval = interval
        self._watcher = watcher
        self._lease = interval * _RENEWALS_A_LEASE
        self._clock = clock
        self._since = 0.0  # the start, then the last renewal that landed (inf: lapse told)
        self._renewals: _FirstRenewals | None = None
        self._task: asyncio.Task[None] | None = None
        self._beside: tuple[anyio.CancelScope, anyio.Event] | None = None  # trio's (`start`)

    async def start(self, since: float | None = None) -> None:
        """Start renewing: the first renewal is due `interval` from now. `since`: when the
        lease began on `clock` (its claim, whose reply took some of it); default: now."""
        self._since = self._clock.now() if since is None else since
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio
            self._beside = (anyio.CancelScope(), anyio.Event())
            spawn = importlib.import_module("trio.lowlevel").spawn_system_task
            spawn(self._renew_beside, *self._beside)
            return
        self._renewals = _first_renewals(loop)
        self._renewals.add(self, self._interval)

    async def _renew_beside(self, scope: anyio.CancelScope, done: anyio.Event) -> None:
        """Renew in `scope` (trio's system task), until it is cancelled; then set `done`."""
        try:
            with scope:
                await anyio.sleep(self._interval)
                await _renew_every(self._renewing, self._interval)
        finally:
            done.set()

    def start_renewing(self, loop: asyncio.AbstractEventLoop) -> None:
        """Renew now, then every `interval`, in a task on `loop` (`_FirstRenewals` calls it)."""
        self._task = loop.create_task(_renew_every(self._renewing, self._interval))

    async def _renewing(self) -> bool | None:
        """Renew, told first if the lease went unrenewed longer than itself; a renewal that
        lands renews the lease from its start (the store's clock read as it was sent)."""
        self._check(at := self._clock.now())
        renewed = await self._renew()
        if renewed:
            self._since = at
        return renewed

    def _check(self, now: float) -> None:
        if self._watcher is not None and (unrenewed := now - self._since) > self._lease:
            self._since = math.inf  # told: not again until a renewal lands
            self._watcher.lapsed(unrenewed)

    @property
    def renewing(self) -> bool:
        """Whether a task renews (or waits to): `stop` then waits for it to end."""
        return self._task is not None or self._beside is not None

    def abandon(self) -> None:
        """Stop renewing without waiting: no renewal starts after this returns, though one
        already under way may still land."""
        self.unwatch()
        if self._renewals is not None:
            self._renewals.discard(self)
        if self._task is not None:
            self._task.cancel()
        if self._beside is not None:
            self._beside[0].cancel()

    def unwatch(self) -> None:
        """The operation ended: tell the watcher if the lease went unrenewed longer than itself,
        then nothing more (the renewals that go on while its outcome is stored go unwatched)."""
        watcher = self._watcher
        if watcher is not None:  # `_check`, inlined: every operation ends here
            self._watcher = None  # the watcher holds this heartbeat: no cycle for the collector
            unrenewed = self._clock.now() - self._since
            if unrenewed > self._lease:
                watcher.lapsed(unrenewed)

    async def stop(self) -> None:
        """Stop renewing (`unwatch` first); once this returns, no renewal runs or will run."""
        self.unwatch()
        if self._renewals is not None:
            self._renewals.discard(self)
        task = self._task
        # Waited for even if the caller is being cancelled: no renewal lands after a release.
        if task is not None:
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait((task,))
        elif self._beside is not None:
            self._beside[0].cancel()
            with anyio.CancelScope(shield=True):
                await self._beside[1].wait()
