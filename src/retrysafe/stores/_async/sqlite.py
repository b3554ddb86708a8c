"""The SQLite store (`sqlite:///path/to.db`): the embedded default, durable, zero set-up.

Standard-library `sqlite3` in WAL mode. Each thread that uses the store gets its own connection,
and every primitive is one transaction in the database file, so the guarantee holds across
threads and across processes on one machine. The async face runs each blocking call in a worker
thread; the sync face (generated) calls it inline. The SQL itself lives in `stores/_sql.py`.
"""

from __future__ import annotations

import functools
import math
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast, get_args
from urllib.parse import unquote, urlsplit

from retrysafe._clock import Clock, SystemClock
from retrysafe._concurrency import AsyncThreadRunner
from retrysafe._engine import may_take
from retrysafe._errors import ConfigurationError, StoreError, StoreUnavailableError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe.stores._async._common import poll_until_settled
from retrysafe.stores._sql import (
    DEFAULT_TABLE,
    RecordTable,
    Synchronous,
    connect,
    store_error,
    write_transaction,
)
from retrysafe.stores.base import StoreStats, query_options

__all__ = ["AsyncSQLiteStore"]

T = TypeVar("T")

_URL_FORMS = "'sqlite:///relative/path.db' or 'sqlite:////absolute/path.db'"
_OPTIONS: dict[str, type] = {"timeout": float, "table": str, "synchronous": str}


class AsyncSQLiteStore:
    """A store in one SQLite database file, shared by threads and processes on one machine.

    The table and its indexes are created on first use; `create_schema` creates them ahead of
    time. The database's directory must exist: a path that cannot be opened makes every
    primitive raise `StoreUnavailableError`.

    Args:
        path: the database file; a relative path is resolved against the current directory now.
        clock: the time source for leases and retention.
        table: the table that holds the records.
        timeout: seconds to wait for another writer's lock before `StoreUnavailableError`.
        synchronous: `"full"` (default) syncs every commit to disk, so a claim or outcome
            survives a power loss; `"normal"` is faster but may lose the last commits then.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        table: str = DEFAULT_TABLE,
        timeout: float = 5.0,
        synchronous: Synchronous = "full",
    ) -> None:
        path = os.fspath(path)
        if path in ("", ":memory:"):
            raise ConfigurationError(
                f"SQLite store path {path!r} is not a database file; an in-memory SQLite"
                " database is private to one connection, so use 'memory://' for that."
            )
        if not (math.isfinite(timeout) and timeout >= 0):
            raise ConfigurationError(
                f"SQLite busy timeout must be a finite number of seconds >= 0, not {timeout}."
            )
        if synchronous not in get_args(Synchronous):
            raise ConfigurationError(
                f"SQLite synchronous must be 'full' or 'normal', not {synchronous!r}."
            )
        self.clock: Clock = clock or SystemClock()
        self.path = os.path.abspath(path)
        self.table = RecordTable(table)
        self.timeout = timeout
        self.synchronous: Synchronous = synchronous
        self._runner = AsyncThreadRunner()
        self._local = threading.local()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []
        self._closed = False
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._write_lock = threading.Lock()
        self._queue: list[_Write[Any]] = []  # writes waiting for the next commit
        self._queue_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> AsyncSQLiteStore:
        """Build the store from `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`.

        Query options: `timeout` (busy timeout in seconds, default 5), `table` (default
        `retrysafe_records`), `synchronous` (`full`, the default, or `normal`).
        """
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ConfigurationError(f"An SQLite store URL is {_URL_FORMS}, not {url!r}.")
        if parts.netloc:
            raise ConfigurationError(
                f"An SQLite store URL has no host ({parts.netloc!r}): use {_URL_FORMS},"
                f" not {url!r}."
            )
        if parts.fragment:
            raise ConfigurationError(f"An SQLite store URL has no '#' fragment: {url!r}.")
        # The path after "sqlite://" starts with one slash that only separates it from the
        # empty host: "sqlite:///a.db" is the relative path "a.db", "sqlite:////a.db" is "/a.db".
        path = unquote(parts.path[1:])
        if not path:
            raise ConfigurationError(
                f"An SQLite store URL names a database file, {_URL_FORMS}; {url!r} names none."
            )
        options = query_options(parts.query, _OPTIONS)
        synchronous = str(options.get("synchronous", "full")).lower()
        if synchronous not in get_args(Synchronous):
            raise ConfigurationError(
                f"Store URL option synchronous={synchronous!r} must be 'full' or 'normal'."
            )
        return cls(
            path,
            clock=clock,
            table=str(options.get("table", DEFAULT_TABLE)),
            timeout=cast(float, options.get("timeout", 5.0)),
            synchronous=cast(Synchronous, synchronous),
        )

    async def create_schema(self) -> None:
        """Create the records table and its indexes unless they exist (idempotent)."""
        await self._run(self._create_schema)

    async def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record."""
        return await self._run(
            functools.partial(self._claim, identity, fingerprint, lease=lease, retention=retention)
        )

    async def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done."""
        return await self._write(
            lambda connection, now: self.table.complete(
                connection, identity, token, outcome, now=now, retention=retention
            )
        )

    async def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record."""
        await self._write(
            lambda connection, now: self.table.release(connection, identity, token, now=now)
        )

    async def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease."""
        return await self._write(
            lambda connection, now: self.table.renew(
                connection, identity, token, now=now, lease=lease
            )
        )

    async def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase."""
        return await self._write(
            lambda connection, now: self.table.checkpoint(
                connection, identity, token, recovery_point, now=now
            )
        )

    async def get(self, identity: Identity) -> Record | None:
        """Return the live record, or None."""
        return await self._read(
            lambda connection, now: self.table.get(connection, identity, now=now)
        )

    async def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state."""
        return await self._write(
            lambda connection, now: self.table.delete(connection, identity, now=now)
        )

    async def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention."""
        return await self._write(
            lambda connection, now: self.table.purge_expired(connection, now=now, limit=limit)
        )

    async def list_records(
        self,
        *,
        namespace: str | None = None,
        scope: str | None = None,
        state: State | None = None,
        created_before: float | None = None,
        limit: int = 100,
    ) -> list[Record]:
        """Return live records matching every given filter, newest first."""
        return await self._read(
            lambda connection, now: self.table.list_records(
                connection,
                now=now,
                namespace=namespace,
                scope=scope,
                state=state,
                created_before=created_before,
                limit=limit,
            )
        )

    async def stats(self) -> StoreStats:
        """Return counts of live records."""
        return await self._read(lambda connection, now: self.table.stats(connection, now=now))

    async def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Poll until the record settles or `timeout` passes."""
        return await poll_until_settled(self, identity, timeout)

    async def aclose(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            connections = list(self._connections.values())
            self._connections.clear()
        for connection in connections:
            connection.close()

    async def _write(self, operation: Callable[[sqlite3.Connection, float], T]) -> T:
        return await self._run(functools.partial(self._execute, operation, write=True))

    async def _read(self, operation: Callable[[sqlite3.Connection, float], T]) -> T:
        return await self._run(functools.partial(self._execute, operation, write=False))

    async def _run(self, call: Callable[[], T]) -> T:
        """Run a blocking call through the runner, turning sqlite3 errors into store errors."""
        try:
            return await self._runner.run(call)
        except sqlite3.Error as error:
            raise store_error(error, self.path) from error

    def _claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Answer from a done record read without the write lock, or claim under it.

        A replay (or a mismatch against a completed request) is a plain read, so it neither
        waits for the writers nor makes them wait: see `RecordTable.done` for why that is safe.
        The time is read after the record, and a record past its retention goes to the locked
        claim like any other case.
        """
        connection = self._connection()
        if not self._schema_ready:
            self._create_schema(first_use=True)
        done = self.table.done(connection, identity)
        if done is not None and not may_take(done, fingerprint, self.clock.now()):
            return Claim(done, acquired=False)
        return self._execute(
            lambda connection, now: self.table.claim(
                connection, identity, fingerprint, now=now, lease=lease, retention=retention
            ),
            write=True,
        )

    def _execute(self, operation: Callable[[sqlite3.Connection, float], T], *, write: bool) -> T:
        """Run `operation` on this thread's connection, in a write transaction if `write`.

        The time is read once the transaction holds the write lock, so a claim that waited for
        another writer decides with the time it acts at. Within this process, writes queue,
        and the thread that takes the write lock commits every queued write at once
        (`_commit_queued`): threads waiting in SQLite's busy handler would sleep in coarse
        steps (up to 100 ms) and wake late, while the lock hands over at once; the busy
        timeout still arbitrates with other processes.
        """
        connection = self._connection()
        if not self._schema_ready:
            self._create_schema(first_use=True)
        if not write:
            return operation(connection, self.clock.now())
        write_ = _Write(operation)
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
            # A committer is running it right now: its outcome is this call's, so wait for it.
            self._write_lock.acquire()
        try:
            if not write_.done:  # no committer took it while this thread waited: commit now
                self._commit_queued(connection)
        finally:
            self._write_lock.release()
        return write_.outcome()

    def _commit_queued(self, connection: sqlite3.Connection) -> None:
        """Run every queued write in one transaction, each in its own savepoint; commit once.

        Group commit: the threads that queued while the previous transaction ran share one
        commit (one sync to disk), and each write stays atomic and isolated as if it ran alone.
        Writes run one after the other, each on the state the previous ones left, and read the
        time when they run; a write that raises is rolled back to its savepoint and gets its own
        error while the others go on. Results are handed back only after the commit; if the
        transaction fails as a whole (BEGIN, COMMIT, or an error after which SQLite rolled it
        back), every write that had not failed on its own gets that error, and none took effect.
        Call with the write lock held.
        """
        with self._queue_lock:
            batch, self._queue = self._queue, []
        alone = len(batch) == 1
        try:
            with write_transaction(connection):
                for write_ in batch:
                    write_.run(connection, self.clock.now(), savepoint=not alone)
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

    def _create_schema(self, *, first_use: bool = False) -> None:
        # On first use, one thread of this store creates the schema while the others wait on
        # this lock rather than on the database's. Other processes racing it are harmless:
        # CREATE ... IF NOT EXISTS in a write transaction.
        connection = self._connection()
        with self._schema_lock:
            if first_use and self._schema_ready:
                return
            with write_transaction(connection):
                self.table.create_schema(connection)
            self._schema_ready = True

    def _connection(self) -> sqlite3.Connection:
        """Return the calling thread's connection, opening it on first use."""
        if self._closed:
            raise StoreError(f"SQLite store {self.path!r} is closed.")
        if self._pid != os.getpid():
            self._forget_inherited()
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = connect(self.path, timeout=self.timeout, synchronous=self.synchronous)
            self._register(connection)
            self._local.connection = connection
        return connection

    def _register(self, connection: sqlite3.Connection) -> None:
        """Track `connection` for `aclose`, closing those of threads that have ended."""
        with self._lock:
            if self._closed:
                connection.close()
                raise StoreError(f"SQLite store {self.path!r} is closed.")
            ended = [thread for thread in self._connections if not thread.is_alive()]
            for thread in ended:
                self._connections.pop(thread).close()
            self._connections[threading.current_thread()] = connection

    def _forget_inherited(self) -> None:
        """In a forked child, set the parent's connections aside and open new ones.

        SQLite forbids using a connection across fork(), and closing one in the child could
        disturb the parent's locks or WAL; so they are kept, unused and unclosed, for the life
        of this process. The child then opens its own connections as any new thread does.
        """
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._write_lock = threading.Lock()
        self._queue = []
        self._queue_lock = threading.Lock()
        self._inherited.extend(self._connections.values())
        self._connections = {}
        self._local = threading.local()
        self._pid = os.getpid()


class _Write(Generic[T]):
    """One write primitive waiting for a commit: its operation, then its result or error."""

    __slots__ = ("done", "error", "operation", "result")

    def __init__(self, operation: Callable[[sqlite3.Connection, float], T]) -> None:
        self.operation = operation
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self, connection: sqlite3.Connection, now: float, *, savepoint: bool) -> None:
        """Run the operation in the open transaction; in a savepoint if others share it.

        Without a savepoint an error propagates (it rolls the transaction back, and this write
        is alone in it). With one, the error is this write's own and its changes are undone,
        unless SQLite has rolled back the whole transaction: then the batch fails with it.
        """
        if not savepoint:
            self.result = self.operation(connection, now)
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
