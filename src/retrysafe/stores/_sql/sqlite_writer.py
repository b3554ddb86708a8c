"""The async SQLite store's writer: one thread that owns the write connection.

Event-loop tasks queue their writes (`Job`) and await a future; the writer thread takes
everything queued, runs it as one group commit (`commit_writes`: each write atomic on its
own, one sync to disk for all), and hands the results back with one
`loop.call_soon_threadsafe` per event loop and batch, so several loops (in several threads) can
share one store and each caller is answered on its own loop. A caller that is a thread (the
async store off asyncio) waits on an event instead.

The thread starts on the first write, one per store and process, and is a daemon. `stop` ends
it once the writes queued before it are answered, and closes its connection. The thread holds
neither the store nor a caller once their writes are answered, so a store dropped unclosed is
collected and its finalizer stops the thread. A forked child starts its own thread and sets
the parent's connection aside unused. If the thread dies of an unexpected error, every write it
held or had queued gets a `StoreError`, and the next write starts a new thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from retrysafe._clock import Clock
from retrysafe._errors import StoreClosedError, StoreError
from retrysafe.stores._closing import closed_on_error
from retrysafe.stores._sql.sqlite_file import (
    COMMIT_GRACE,
    Operation,
    Schema,
    Write,
    commit_writes,
)
from retrysafe.stores._sql.sqlite_threads import forks, quiet_at_fork, set_aside

__all__ = ["Job", "SQLiteWriter"]

T = TypeVar("T")


def _stop(connection: sqlite3.Connection, now: float) -> None:
    """The operation of a job that asks the writer thread to stop (never run)."""


class Job(Write[T]):
    """One write queued for the writer thread, and how its caller is answered.

    A caller on an event loop awaits `future`, which the writer resolves on that loop. Once
    the loop has handed it the outcome, `settled` is true; a caller cancelled before then waits
    for it on `waiter` (`AsyncSQLiteRunner`). A caller that is a thread waits on `event`.
    """

    __slots__ = ("deadline", "event", "future", "loop", "settled", "waiter")

    def __init__(
        self,
        operation: Operation[T],
        *,
        future: asyncio.Future[T] | None = None,
        event: threading.Event | None = None,
        one_statement: bool = False,
    ) -> None:
        super().__init__(operation, one_statement=one_statement)
        self.future = future
        self.loop = None if future is None else future.get_loop()
        self.event = event
        self.settled = False
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0  # when its busy timeout ends (`time.monotonic`), set when queued


def stop_job(
    *, future: asyncio.Future[None] | None = None, event: threading.Event | None = None
) -> Job[None]:
    """A job that, queued, stops the writer thread once the writes before it are answered."""
    return Job(_stop, future=future, event=event)


def _answer(jobs: list[Job[Any]]) -> None:
    """Hand each job's outcome to its caller: runs on the callers' event loop."""
    for job in jobs:
        job.settled = True
        future = job.future
        if future is not None and not future.done():  # a cancelled caller's is done
            if job.error is None:
                future.set_result(job.result)
            else:
                future.set_exception(job.error)
        if job.waiter is not None and not job.waiter.done():
            job.waiter.set_result(None)


class SQLiteWriter:
    """The writer thread of one store: started on demand, restarted after a fork or a crash.

    Args:
        open_connection: opens the write connection (called in the writer thread).
        schema: the store's schema, created on the connection before its first write.
        clock: the time each write runs at.
        path: the database file, for error messages.
        check: runs before each batch; if it raises, every write of the batch gets its error
            and the connection is closed (the file was deleted or replaced: `FileIdentity`).
        timeout: the busy timeout: how long a fork waits for a batch to end (`quiet_at_fork`).
    """

    def __init__(
        self,
        open_connection: Callable[[], sqlite3.Connection],
        *,
        schema: Schema,
        clock: Clock,
        path: str,
        check: Callable[[], None] | None = None,
        timeout: float = 0.0,
    ) -> None:
        self._open = open_connection
        self._check = check
        self._timeout = timeout
        self._batch_lock = threading.Lock()  # held while a batch commits (`fork_locks`)
        self._schema = schema
        self._clock = clock
        self._path = path
        self._lock = threading.Lock()  # guards _thread, _stopped, and each thread's `ended`
        self._thread: _WriterThread | None = None
        self._stopped = False
        self._forks = forks.count
        quiet_at_fork.add(self)

    def fork_locks(self) -> list[tuple[threading.Lock, float]]:
        """The lock held while a batch commits, for `os.fork()` (`quiet_at_fork`)."""
        if self._forks != forks.count:  # not used since a fork: stale, replaced on next use
            return []
        return [(self._batch_lock, self._timeout + COMMIT_GRACE)]

    def submit(self, job: Job[Any]) -> None:
        """Queue `job` for the writer thread, starting one if none is running."""
        if self._forks != forks.count:
            self._forget_inherited()
        with self._lock:
            if self._stopped:
                raise StoreClosedError(f"SQLite store {self._path!r} is closed.")
            thread = self._thread
            if thread is None or thread.ended:
                thread = self._thread = _WriterThread(self)
                thread.start()
            job.deadline = time.monotonic() + self._timeout
            thread.jobs.put(job)

    def call(self, operation: Operation[T], *, one_statement: bool = False) -> T:
        """Run the write `operation` on the writer thread and return its outcome; blocks."""
        event = threading.Event()
        job = Job(operation, event=event, one_statement=one_statement)
        self.submit(job)
        event.wait()
        return job.outcome()

    def stop(self, job: Job[None] | None = None) -> bool:
        """Refuse new writes; the thread stops once the writes already queued are answered.

        `job` (from `stop_job`), if given, is answered once the connection is closed. Returns
        whether it will be: False when no thread is running (nothing to wait for).
        """
        if self._forks != forks.count:
            self._forget_inherited()
        with self._lock:
            self._stopped = True
            thread = self._thread
            if thread is None or thread.ended:
                return False
            thread.jobs.put(job or stop_job())
            return True

    def _forget_inherited(self) -> None:
        """In a forked child: no thread runs here; set the parent's connection aside."""
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._batch_lock = threading.Lock()
        thread, self._thread = self._thread, None
        if thread is not None and thread.connection is not None:
            set_aside(thread.connection)
        self._forks = forks.count


class _WriterThread(threading.Thread):
    """One run of the writer: its queue, its connection, and whether it has ended."""

    def __init__(self, writer: SQLiteWriter) -> None:
        super().__init__(name=f"retrysafe-sqlite-writer {writer._path}", daemon=True)
        # What the thread needs, and not the writer: the writer dies with the store.
        self._open = writer._open
        self._schema = writer._schema
        self._clock = writer._clock
        self._path = writer._path
        self._check = writer._check
        self._timeout = writer._timeout
        self._busy_timeout = writer._timeout  # the connection's, as `connect` set it
        self._lock = writer._lock
        self._batch_lock = writer._batch_lock
        self.jobs: queue.SimpleQueue[Job[Any]] = queue.SimpleQueue()
        self.connection: sqlite3.Connection | None = None
        self.ended = False  # set under the writer's lock: then nothing more is queued here
        self.committing = False
        """Whether a batch is being committed: a write queued meanwhile goes into the next."""

    def run(self) -> None:
        """Commit what is queued, batch after batch, until a stop job or an unexpected error."""
        batch: list[Job[Any]] = []
        try:
            stopping = False
            while not stopping:
                batch.append(self.jobs.get())
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(self.jobs.get_nowait())
                self.committing = True
                with self._batch_lock:  # a fork waits for the batch to end (`quiet_at_fork`)
                    stopping = self._commit(batch)
                self.committing = False
                batch.clear()  # hold no caller's write while waiting for the next
        except BaseException as error:  # a bug or a BaseException from a write: stop, answer all
            crash = StoreError(
                f"SQLite store {self._path!r} failed: its writer thread stopped ({error!r})."
            )
            crash.__cause__ = error
            for job in batch:  # a write's own error stays its own; the others get the crash
                unanswered = not job.done or not isinstance(job.error, Exception | None)
                if unanswered and job.operation is not _stop:
                    job.result, job.error = None, crash
            self._end(batch, crash)
            return
        self._end([], StoreClosedError(f"SQLite store {self._path!r} is closed."))

    def _commit(self, batch: list[Job[Any]]) -> bool:
        """Commit the batch's writes, answer their callers; return whether a job asked to stop."""
        writes = [job for job in batch if job.operation is not _stop]
        if writes:
            try:
                if self._check is not None:
                    self._check()
                connection = self._connection()
            except Exception as error:  # the file cannot be opened, or was replaced: say why
                self._close()
                for job in writes:
                    job.error = error
            else:
                answered = self._commit_in_time(connection, writes)
                if answered:
                    batch = [job for job in batch if job not in answered]
                    writes = [job for job in writes if job not in answered]
        if len(writes) == len(batch):
            _settle(writes)
            return False
        self._close()
        _settle(batch)
        return True

    def _commit_in_time(
        self, connection: sqlite3.Connection, writes: list[Job[Any]]
    ) -> set[Job[Any]]:
        """Commit `writes`, each given about its busy timeout from when it was queued.

        Another process holding the database keeps the batch busy: SQLite waits until the
        earliest deadline of the batch, then the writes past their deadline are answered at
        once with the busy error (the batch never began: none took effect), and the others try
        again until theirs. A write queued behind a batch that waited thus waits no longer
        than its own timeout (not a second full one). Return the writes answered early.
        """
        answered: set[Job[Any]] = set()
        while True:
            self._wait_at_most(connection, min(job.deadline for job in writes) - time.monotonic())
            commit_writes(connection, writes, self._clock.now)
            if not all(_busy(job.error) for job in writes):
                return answered
            now = time.monotonic() + _DEADLINE_SLACK
            # None late: SQLite gave up without waiting (no busy handler then), so all answer.
            late = [job for job in writes if job.deadline <= now] or writes
            _settle(late)
            answered.update(late)
            writes = [job for job in writes if job not in answered]
            if not writes:
                return answered
            for job in writes:
                job.result, job.error, job.done = None, None, False

    def _wait_at_most(self, connection: sqlite3.Connection, seconds: float) -> None:
        """Set the connection's busy timeout to `seconds` (at most the store's), if it differs."""
        seconds = min(max(seconds, 0.0), self._timeout)
        if seconds >= self._timeout - _DEADLINE_SLACK:
            seconds = self._timeout  # fresh writes: the store's own timeout
        if seconds != self._busy_timeout:
            connection.execute(f"PRAGMA busy_timeout = {math.ceil(seconds * 1000)}")
            self._busy_timeout = seconds

    def _connection(self) -> sqlite3.Connection:
        """Return the write connection, opening it and creating the schema on first use."""
        if self.connection is None:
            connection = self._open()
            with closed_on_error(connection):
                self._schema.create(connection, first_use=True)
            self.connection = connection
        return self.connection

    def _close(self) -> None:
        self._busy_timeout = self._timeout  # a new connection starts with the store's
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()

    def _end(self, answered: list[Job[Any]], error: StoreError) -> None:
        """Close the connection, stop taking jobs, and answer every job still queued."""
        with contextlib.suppress(Exception):
            self._close()
        with self._lock:
            self.ended = True
        left: list[Job[Any]] = []
        with contextlib.suppress(queue.Empty):
            while True:
                left.append(self.jobs.get_nowait())
        for job in left:
            if job.operation is not _stop:
                job.error = error
        _settle([*answered, *left])


_DEADLINE_SLACK = 0.005
"""Seconds within which a write's busy timeout counts as spent, or as still whole."""


def _busy(error: BaseException | None) -> bool:
    """Whether `error` is SQLite's "database is locked" past the busy timeout."""
    code = getattr(error, "sqlite_errorcode", -1) & 0xFF
    return isinstance(error, sqlite3.OperationalError) and code == sqlite3.SQLITE_BUSY


def _settle(jobs: list[Job[Any]]) -> None:
    """Answer each job's caller: one call per event loop, an event per waiting thread."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Job[Any]]] = {}
    for job in jobs:
        if job.loop is None:
            job.settled = True
            if job.event is not None:
                job.event.set()
        else:
            by_loop.setdefault(job.loop, []).append(job)
    for loop, answered in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: its callers are gone
            loop.call_soon_threadsafe(_answer, answered)
