"""One SQLite database file used by many threads: the blocking half of the SQLite store.

Each thread gets its own connection (SQLite connections are not shared between threads), a
forked child opens its own, and closing the store closes them all (`sqlite_threads.py`); the
schema is created once per store (`Schema`), and writes queue and commit in groups
(`commit_writes`). Both faces of the SQLite store inherit `SQLiteFile` and run their primitives
through a runner (`sqlite_runners.py`): the sync face calls these methods inline, the async face
hands its writes to one writer thread (`sqlite_writer.py`) that commits them with the same
`commit_writes`. The statements are `RecordTable`'s.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

from retrysafe._clock import Clock
from retrysafe._engine import may_take
from retrysafe._errors import StoreUnavailableError
from retrysafe._record import Claim, Identity
from retrysafe.stores._sql.sqlite import RecordTable
from retrysafe.stores._sql.sqlite_connection import (
    FileIdentity,
    Synchronous,
    connect_checked,
    write_transaction,
)
from retrysafe.stores._sql.sqlite_threads import Slot, ThreadConnections, forks, quiet_at_fork

__all__ = ["COMMIT_GRACE", "Operation", "SQLiteFile", "Schema", "Write", "commit_writes"]

T = TypeVar("T")

Operation = Callable[[sqlite3.Connection, float], T]
"""A primitive of `RecordTable`, given this thread's connection and the time it runs at."""

COMMIT_GRACE = 2.0
"""Seconds, past the busy timeout, that a write taken into another thread's commit waits for
that commit's statements and sync to disk before its outcome counts as unknown."""


class SQLiteFile:
    """The connections, schema and write queue of one SQLite database file.

    Args:
        path: the database file, absolute.
        clock: the time source for leases and retention.
        table: the records table.
        timeout: seconds to wait for another writer's lock.
        synchronous: the durability of each commit (`connect`).
    """

    def __init__(
        self, path: str, *, clock: Clock, table: str, timeout: float, synchronous: Synchronous
    ) -> None:
        self.clock = clock
        self.path = path
        self.table = RecordTable(table)
        self.timeout = timeout
        self.synchronous: Synchronous = synchronous
        self.identity = FileIdentity(path)
        # Opens a connection and checks its file (`FileIdentity`); holds no reference to the store.
        self.open_connection = functools.partial(
            connect_checked, self.identity, path, timeout=timeout, synchronous=synchronous
        )
        self._connections = ThreadConnections(self.open_connection, path)
        self.identity.on_broken = self._connections.close
        # Closes every connection at `close`/`aclose`, or when the store is garbage-collected
        # unclosed (the finalizer holds the connections, not the store).
        self._close_connections = weakref.finalize(self, self._connections.close)
        self._forks = forks.count
        self.schema = Schema(self.table)
        self._write_lock = threading.Lock()
        self._queue: list[Write[Any]] = []  # writes waiting for the next commit
        self._queue_lock = threading.Lock()
        quiet_at_fork.add(self)

    def fork_locks(self) -> list[tuple[threading.Lock, float]]:
        """The locks held by every write of this process, for `os.fork()` (`quiet_at_fork`)."""
        if self._forks != forks.count:  # not used since a fork: stale, replaced on next use
            return []
        wait = self.timeout + COMMIT_GRACE
        return [(self.schema.lock, wait), (self._write_lock, wait)]

    def _claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Answer from a record read without the write lock, or claim under it.

        A replay, a mismatch, or a claim on a live in-flight record (a 409 or a wait) is a
        plain read, so it neither waits for the writers nor makes them wait: see
        `RecordTable.current` for why that is safe. The time is read after the record; a
        record the claim may take (absent, past its retention, a lapsed lease) goes to the
        locked claim.
        """
        slot = self._enter()
        try:
            connection = slot.connection
            self.identity.check()
            current = self.table.current(connection, identity)
            if current is not None and not may_take(current, fingerprint, self.clock.now()):
                return Claim(current, acquired=False)
            return self._queue_write(
                connection,
                lambda connection, now: self.table.claim(
                    connection, identity, fingerprint, now=now, lease=lease, retention=retention
                ),
                one_statement=True,
            )
        finally:
            self._connections.leave(slot)

    def _execute(self, operation: Operation[T], *, write: bool, one_statement: bool = False) -> T:
        """Run `operation` on this thread's connection, in a write transaction if `write`
        (`one_statement`: see `Write`)."""
        slot = self._enter()
        try:
            if not write:
                return operation(slot.connection, self.clock.now())
            return self._queue_write(slot.connection, operation, one_statement=one_statement)
        finally:
            self._connections.leave(slot)

    def _queue_write(
        self, connection: sqlite3.Connection, operation: Operation[T], *, one_statement: bool
    ) -> T:
        """Run the write `operation` in a transaction, with the writes queued alongside it.

        The time is read once the transaction holds the write lock, so a claim that waited for
        another writer decides with the time it acts at. Within this process, writes queue,
        and the thread that takes the write lock commits every queued write at once
        (`_commit_queued`): threads waiting in SQLite's busy handler would sleep in coarse
        steps (up to 100 ms) and wake late, while the lock hands over at once; the busy
        timeout still arbitrates with other processes.
        """
        write_ = Write(operation, one_statement=one_statement)
        with self._queue_lock:
            self._queue.append(write_)
        if not self._write_lock.acquire(timeout=self.timeout):
            with self._queue_lock:
                if write_ in self._queue:  # no committer took it: it never ran
                    self._queue.remove(write_)
                    raise StoreUnavailableError(
                        f"SQLite store {self.path!r} is unavailable: this process's other"
                        f" writers held it past the busy timeout ({self.timeout} s)."
                    )
                finished = write_.finished  # set under this lock when it was taken
            return self._outcome_of_taken(write_, finished)
        try:
            if not write_.done:  # no committer took it while this thread waited: commit now
                self._commit_queued(connection)
        finally:
            self._write_lock.release()
        return write_.outcome()

    def _outcome_of_taken(self, write_: Write[T], finished: threading.Event | None) -> T:
        """Wait for the committer that took `write_` into its batch, then return its outcome.

        The committer sets `finished` (one event for its batch) whatever happens, after at
        most its own busy timeout and its statements; waiting on the event (not on the unfair
        write lock, which later committers may keep winning) bounds this call to about twice
        the timeout.
        """
        if finished is not None:  # always: a batch another thread took holds its write too
            finished.wait(self.timeout + COMMIT_GRACE)
        if not write_.done:
            raise StoreUnavailableError(
                f"SQLite store {self.path!r} is unavailable: the commit that took this write"
                f" has not ended within the busy timeout ({self.timeout} s); whether the"
                " write took effect is unknown."
            )
        return write_.outcome()

    def _commit_queued(self, connection: sqlite3.Connection) -> None:
        """Run every queued write in one transaction (`commit_writes`); call with the write lock."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
            if len(batch) > 1:  # other threads' writes: they wait on one event (`_queue_write`)
                finished = threading.Event()
                for write_ in batch:
                    write_.finished = finished
        commit_writes(connection, batch, self.clock.now, check=self.identity.check)

    def _create_schema(self, *, first_use: bool = False) -> None:
        with self._connections.use() as connection:
            self.schema.create(connection, first_use=first_use)

    def _enter(self) -> Slot:
        """Mark this thread's connection in use (`ThreadConnections.enter`), the schema
        created; `self._connections.leave(slot)` ends the use."""
        if self._forks != forks.count:
            self._forget_inherited()
        if self.identity.broken is not None:  # the file was deleted or replaced: refused
            raise self.identity.broken
        slot = self._connections.enter()
        if not self.schema.ready:
            try:
                self._create_schema(first_use=True)
            except BaseException:
                self._connections.leave(slot)
                raise
        return slot

    def _connection(self) -> sqlite3.Connection:
        """Return the calling thread's connection, opening it on first use."""
        return self._connections.get()

    def _forget_inherited(self) -> None:
        """In a forked child, drop the parent's write queue and locks; connections start afresh.

        The parent's connections are set aside by `ThreadConnections`; the child opens its own
        as any new thread does.
        """
        self._write_lock = threading.Lock()  # the parent's may have been held by another thread
        self._queue = []
        self._queue_lock = threading.Lock()
        self._forks = forks.count


class Schema:
    """Whether the records table and its indexes exist yet: created once per store.

    On first use, one thread of the store (or its writer thread) creates them while the others
    wait on this lock rather than on the database's. Other processes racing it are harmless:
    CREATE ... IF NOT EXISTS in a write transaction.
    """

    __slots__ = ("_forks", "lock", "ready", "table")

    def __init__(self, table: RecordTable) -> None:
        self.table = table
        self.lock = threading.Lock()
        self.ready = False
        self._forks = forks.count

    def create(self, connection: sqlite3.Connection, *, first_use: bool = False) -> None:
        """Create the schema on `connection`; on `first_use`, only if no one has yet."""
        if self._forks != forks.count:  # a forked child: the parent's lock may be held
            self.lock = threading.Lock()
            self._forks = forks.count
        with self.lock:
            if first_use and self.ready:
                return
            with write_transaction(connection):
                self.table.create_schema(connection)
            self.ready = True


def commit_writes(
    connection: sqlite3.Connection,
    batch: Sequence[Write[Any]],
    now: Callable[[], float],
    *,
    check: Callable[[], None] | None = None,
) -> None:
    """Run the writes of `batch` in one transaction, each atomic on its own; commit once.

    Group commit: the writers that queued while the previous transaction ran share one commit
    (one sync to disk), and each write stays atomic and isolated as if it ran alone (`Write.run`:
    in its own savepoint, or a single modifying statement, which SQLite undoes by itself when it
    fails). Writes run one after the other, each on the state the previous ones left, and read
    the time (`now`) when they run; a write that raises is undone and gets its own error while
    the others go on. Results are handed back only after the commit; if the transaction
    fails as a whole (BEGIN, COMMIT, or an error after which SQLite rolled it back), every write
    that had not failed on its own gets that error, and none took effect. Call where no other
    write of the store runs at the same time: with the write lock held, or on the writer thread.
    `check`, if given, runs first: if it raises, every write gets its error and none runs (the
    store's file was deleted or replaced: `FileIdentity`).
    """
    alone = len(batch) == 1
    try:
        if check is not None:
            check()
        with write_transaction(connection):
            for write_ in batch:
                write_.run(connection, now(), shared=not alone)
    except BaseException as error:
        for write_ in batch:
            if write_.error is None:
                write_.result = None
                write_.error = error
        if not isinstance(error, Exception):
            raise
    finally:
        for write_ in batch:
            write_.done = True
            if write_.finished is not None:
                write_.finished.set()


class Write(Generic[T]):
    """One write primitive waiting for a commit: its operation, then its result or error.

    `one_statement`: the operation makes its changes in at most one statement (reads, and
    statements that change nothing, around it), so it needs no savepoint to stay atomic in a
    group (`run`). `finished`, if given, is set once the write is done (`commit_writes`), for
    a thread that waits for another's commit.
    """

    __slots__ = ("done", "error", "finished", "one_statement", "operation", "result")

    def __init__(
        self,
        operation: Operation[T],
        *,
        one_statement: bool = False,
        finished: threading.Event | None = None,
    ) -> None:
        self.operation = operation
        self.one_statement = one_statement
        self.finished = finished
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self, connection: sqlite3.Connection, now: float, *, shared: bool) -> None:
        """Run the operation in the open transaction, undoable alone if others share it.

        Alone (not `shared`), an error propagates: it rolls the transaction back, and
        this write is alone in it. Shared, the error is this write's own and its changes are
        undone, unless SQLite has rolled back the whole transaction: then the batch fails with
        it. A `one_statement` write is undone by SQLite itself: a statement that fails is
        rolled back on its own, the transaction's earlier statements kept (statement-level
        atomicity; an error SQLite cannot confine to the statement, such as an I/O error or an
        interrupt, rolls back the whole transaction, which `in_transaction` tells). Should it
        fail after its statement made a change, nothing can undo the change alone, so the
        batch fails. Any other write runs in a savepoint.
        """
        if not shared:
            self.result = self.operation(connection, now)
            return
        if self.one_statement:
            changes = connection.total_changes
            try:
                self.result = self.operation(connection, now)
            except Exception as error:
                if not connection.in_transaction or connection.total_changes != changes:
                    raise
                self.error = error
            return
        connection.execute("SAVEPOINT retrysafe_write")
        try:
            self.result = self.operation(connection, now)
        except Exception as error:
            if not connection.in_transaction:
                raise
            self.error = error
            connection.execute("ROLLBACK TO retrysafe_write")
        connection.execute("RELEASE retrysafe_write")

    def outcome(self) -> T:
        """Return the result, or raise the error, once committed."""
        if self.error is not None:
            raise self.error
        return cast(T, self.result)
