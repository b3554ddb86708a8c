"""The connections of one SQLite store: one per thread, opened on first use, closed together.

A connection is used only by the thread that opened it, but it is opened with
`check_same_thread=False` so that another thread may close it: closing the store, or the
garbage collector once the store is unreachable, closes every connection the store opened,
whichever thread opened it and whether or not that thread is still alive. Closing a connection
while its thread runs a statement on it would crash the interpreter, so each call marks its
connection in use (`ThreadConnections.use`), and a connection in use when the store closes is
closed by its own thread as soon as that call returns.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Protocol

from retrysafe._errors import StoreClosedError, StoreError

__all__ = ["ForkQuiet", "Slot", "ThreadConnections", "forks", "quiet_at_fork", "set_aside"]


class _Forks:
    """How many times this process is a fork's child: compared, not `os.getpid()` per call."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def forked(self) -> None:
        self.count += 1


forks = _Forks()
os.register_at_fork(after_in_child=forks.forked)


class ForkQuiet(Protocol):
    """A store part whose writes must not be in flight when the process forks."""

    def fork_locks(self) -> list[tuple[threading.Lock, float]]:
        """The locks that every write holds, each with how long a fork may wait for it."""
        ...


class _QuietAtFork:
    """Holds every SQLite store's write locks across `os.fork()`: no write is in flight then.

    SQLite keeps its locks' state per file and per process, in memory a forked child inherits:
    a child forked while a thread of its parent held the database's write lock sees that lock
    held for ever, and every write it tries fails (busy). So before a fork, the forking thread
    takes each store's write locks (waiting up to its busy timeout for a commit to end, then
    forking anyway), and both processes release them after it.
    """

    def __init__(self) -> None:
        self._owners: weakref.WeakSet[ForkQuiet] = weakref.WeakSet()
        self._held: list[threading.Lock] = []

    def add(self, owner: ForkQuiet) -> None:
        self._owners.add(owner)

    def before(self) -> None:
        held: list[threading.Lock] = []
        for owner in list(self._owners):
            for lock, wait in owner.fork_locks():
                if lock.acquire(timeout=wait):
                    held.append(lock)
        self._held = held

    def after(self) -> None:
        held, self._held = self._held, []
        for lock in reversed(held):
            lock.release()


quiet_at_fork = _QuietAtFork()
os.register_at_fork(
    before=quiet_at_fork.before,
    after_in_parent=quiet_at_fork.after,
    after_in_child=quiet_at_fork.after,
)

# The connections a forked child inherited from its parent, kept unused and unclosed for the
# life of the child: SQLite forbids using a connection across fork(), and closing one in the
# child could disturb the parent's locks or WAL.
_INHERITED: list[sqlite3.Connection] = []


def set_aside(connection: sqlite3.Connection) -> None:
    """In a forked child, keep a connection inherited from the parent, unused and unclosed."""
    _INHERITED.append(connection)


class Slot:
    """One thread's connection, and how many calls of that thread are using it now."""

    __slots__ = ("connection", "users")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.users = 0


class ThreadConnections:
    """Every connection one store opened, one per thread, so that `close` closes them all.

    Args:
        open_connection: opens a connection to the database; called in the thread that uses it.
        path: the database file, for error messages.
    """

    def __init__(self, open_connection: Callable[[], sqlite3.Connection], path: str) -> None:
        self._open = open_connection
        self._path = path
        self._lock = threading.Lock()  # guards _slots, _closed and every slot's users
        self._slots: dict[threading.Thread, Slot] = {}
        self._local = threading.local()
        self._closed = False
        self._forks = forks.count

    def get(self) -> sqlite3.Connection:
        """Return the calling thread's connection, opening it on first use."""
        return self._slot().connection

    @contextlib.contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        """Yield the calling thread's connection, open until the block ends even if closed."""
        slot = self.enter()
        try:
            yield slot.connection
        finally:
            self.leave(slot)

    def enter(self) -> Slot:
        """Mark the calling thread's connection in use and return its slot (see `leave`)."""
        slot = self._slot()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            slot.users += 1
        return slot

    def leave(self, slot: Slot) -> None:
        """End a use begun by `enter`; close the connection if the store closed meanwhile."""
        with self._lock:
            slot.users -= 1
            last = self._closed and slot.users == 0
        if last:  # `close` left it to this thread, which has now finished with it
            slot.connection.close()

    def close(self) -> None:
        """Close every connection now, or once its thread's call returns; refuse new calls."""
        self._leave_parents()
        with self._lock:
            self._closed = True
            idle = [slot for slot in self._slots.values() if slot.users == 0]
            self._slots.clear()
        for slot in idle:
            slot.connection.close()

    def _slot(self) -> Slot:
        self._leave_parents()
        if self._closed:
            raise self._closed_error()
        slot: Slot | None = getattr(self._local, "slot", None)
        if slot is not None:
            return slot
        slot = Slot(self._open())
        with self._lock:
            if self._closed:
                slot.connection.close()
                raise self._closed_error()
            # A thread that ended has no call running: its connection closes here, not later.
            ended = [thread for thread in self._slots if not thread.is_alive()]
            for thread in ended:
                self._slots.pop(thread).connection.close()
            self._slots[threading.current_thread()] = slot
        self._local.slot = slot
        return slot

    def _leave_parents(self) -> None:
        """In a forked child, set the parent's connections aside (`_INHERITED`); start afresh."""
        if self._forks == forks.count:
            return
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        _INHERITED.extend(slot.connection for slot in self._slots.values())
        self._slots = {}
        self._local = threading.local()
        self._forks = forks.count

    def _closed_error(self) -> StoreError:
        return StoreClosedError(f"SQLite store {self._path!r} is closed.")
