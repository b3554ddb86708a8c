"""How each face of the SQLite store runs its primitives on the database file.

The store's code is written once, async (`stores/_async/sqlite.py`), and calls a runner:
`claim`, `write`, `read` (a point read), `scan` (a listing or a count), `create_schema`,
`aclose`. `scripts/unasync.py` turns `AsyncSQLiteRunner` into `SQLiteRunner` for the generated
sync face, which calls `SQLiteFile` inline in the calling thread. Both map `sqlite3` errors to
store errors (`store_error`).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from retrysafe._engine import may_take
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._sql.sqlite_connection import connect, store_error
from retrysafe.stores._sql.sqlite_file import Operation, SQLiteFile
from retrysafe.stores._sql.sqlite_threads import ThreadConnections
from retrysafe.stores._sql.sqlite_writer import Job, SQLiteWriter, stop_job

__all__ = ["AsyncSQLiteRunner", "SQLiteRunner"]

T = TypeVar("T")

# The primary result codes after which a read in the event loop moves to a worker thread.
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class SQLiteRunner:
    """The sync face's runner: every primitive inline, in the calling thread."""

    def __init__(self, file: SQLiteFile) -> None:
        self._file = file

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` (`SQLiteFile._claim`)."""
        file = self._file
        return self._run(
            functools.partial(file._claim, identity, fingerprint, lease=lease, retention=retention)
        )

    def write(self, operation: Operation[T]) -> T:
        """Run a write primitive in a write transaction, group-committed with other threads'."""
        return self._run(functools.partial(self._file._execute, operation, write=True))

    def read(self, operation: Operation[T]) -> T:
        """Run a read primitive on this thread's connection."""
        return self._run(functools.partial(self._file._execute, operation, write=False))

    scan = read

    def create_schema(self) -> None:
        """Create the schema unless it exists."""
        self._run(self._file._create_schema)

    def close(self) -> None:
        """Close every thread's connection."""
        self._file._close_connections()

    def _run(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except sqlite3.Error as error:
            raise store_error(error, self._file.path) from error


class AsyncSQLiteRunner:
    """The async face's runner: writes on one writer thread, point reads in the event loop.

    - Writes (and a claim that finds no done record) go to the store's writer thread
      (`SQLiteWriter`), which commits them in groups and answers on the caller's event loop;
      there is no hop to a worker thread per call.
    - Point reads (`get`, and the read with which a claim answers a replay) run in the event
      loop on a connection of that thread: in WAL mode they do not wait for the writer, and
      cost about 10 µs against about 70 µs for a hop to a worker thread. That connection has
      no busy timeout: if the file is locked against readers (an exclusive lock, a recovery),
      the read moves to a worker thread and waits there instead, so the loop never waits for
      SQLite's busy timeout. A claim then goes straight to the writer.
    - Scans (`list_records`, `stats`) read the whole table, milliseconds on a large one, so
      they run in a worker thread (anyio), on that thread's connection.

    Off asyncio (trio), a write waits for the writer thread in a worker thread.

    Cancellation: a caller cancelled while its write is queued or running waits until the
    writer has run it (it may take effect, as if the call had not been cancelled), then sees
    the cancellation; the write's result is dropped. This is what a cancelled call that runs
    in a worker thread does (`anyio.to_thread.run_sync`), so the store behaves as before.
    """

    def __init__(self, file: SQLiteFile) -> None:
        self._file = file
        self._writer = SQLiteWriter(
            functools.partial(
                connect, file.path, timeout=file.timeout, synchronous=file.synchronous
            ),
            schema=file.schema,
            clock=file.clock,
            path=file.path,
        )
        # Busy timeout 0: a read in the event loop fails at once where it would wait.
        self._reads = ThreadConnections(
            functools.partial(connect, file.path, timeout=0, synchronous=file.synchronous),
            file.path,
        )
        # Stops the writer thread and closes the loops' connections at `aclose`, or once the
        # store is garbage-collected unclosed (the finalizer holds neither store nor runner).
        self._shut = weakref.finalize(self, _shut, self._writer, self._reads)

    async def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Answer from a done record read in the loop, or claim on the writer thread.

        As `SQLiteFile._claim`: the read needs no write lock (`RecordTable.done`), the time is
        read after the record, and anything but a live done record goes to the locked claim.
        """
        file = self._file
        table = file.table
        done = self._read_here(lambda connection, now: table.done(connection, identity))
        if isinstance(done, Record) and not may_take(done, fingerprint, file.clock.now()):
            return Claim(done, acquired=False)
        return await self.write(
            lambda connection, now: table.claim(
                connection, identity, fingerprint, now=now, lease=lease, retention=retention
            )
        )

    async def write(self, operation: Operation[T]) -> T:
        """Run a write primitive on the writer thread; return its outcome."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): wait for the writer in a worker thread
            return await anyio.to_thread.run_sync(self._call, operation)
        future: asyncio.Future[T] = loop.create_future()
        job = Job(operation, future=future)
        self._writer.submit(job)
        try:
            return await future
        except asyncio.CancelledError:
            await _outlast(job, loop)
            raise
        except sqlite3.Error as error:
            raise store_error(error, self._file.path) from error

    async def read(self, operation: Operation[T]) -> T:
        """Run a point read in the event loop, or in a worker thread if the file is locked."""
        result = self._read_here(operation)
        if isinstance(result, _Busy):
            return await self.scan(operation)
        return result

    async def scan(self, operation: Operation[T]) -> T:
        """Run a read in a worker thread, on that thread's connection."""
        return await anyio.to_thread.run_sync(self._scan, operation)

    async def create_schema(self) -> None:
        """Create the schema unless it exists, on the writer thread."""
        table = self._file.table
        await self.write(lambda connection, now: table.create_schema(connection))

    async def aclose(self) -> None:
        """Close every connection; wait until the writer has answered what was queued."""
        self._file._close_connections()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): wait in a worker thread
            event = threading.Event()
            if self._stop_writer(stop_job(event=event)):
                await anyio.to_thread.run_sync(event.wait)
            return
        future: asyncio.Future[None] = loop.create_future()
        if self._stop_writer(stop_job(future=future)):
            await future

    def _stop_writer(self, job: Job[None]) -> bool:
        """Stop the writer (`SQLiteWriter.stop`) and close the loops' connections."""
        answered = self._writer.stop(job)
        self._shut.detach()
        self._reads.close()
        return answered

    def _read_here(self, operation: Operation[T]) -> T | _Busy:
        """Run a read in this thread at once, or return `_BUSY` where it would have to wait.

        Before the schema is known to exist, reads go elsewhere too: creating it is a write.
        """
        if not self._file.schema.ready:
            return _BUSY
        try:
            slot = self._reads.enter()
        except sqlite3.Error as error:
            return self._busy_or_raise(error)
        try:
            return operation(slot.connection, self._file.clock.now())
        except sqlite3.Error as error:
            return self._busy_or_raise(error)
        finally:
            self._reads.leave(slot)

    def _busy_or_raise(self, error: sqlite3.Error) -> _Busy:
        if getattr(error, "sqlite_errorcode", -1) & 0xFF in _BUSY_CODES:
            return _BUSY
        raise store_error(error, self._file.path) from error

    def _call(self, operation: Operation[T]) -> T:
        try:
            return self._writer.call(operation)
        except sqlite3.Error as error:
            raise store_error(error, self._file.path) from error

    def _scan(self, operation: Operation[T]) -> T:
        try:
            return self._file._execute(operation, write=False)
        except sqlite3.Error as error:
            raise store_error(error, self._file.path) from error


class _Busy:
    """What a read in the event loop returns where it would have to wait: move elsewhere."""


_BUSY = _Busy()


async def _outlast(job: Job[T], loop: asyncio.AbstractEventLoop) -> None:
    """Wait, shielded from cancellation, until the writer has answered a cancelled job."""
    with anyio.CancelScope(shield=True):
        while not job.settled:
            job.waiter = loop.create_future()
            try:
                await job.waiter
            except asyncio.CancelledError:  # cancelled again by plain asyncio: keep waiting
                continue


def _shut(writer: SQLiteWriter, reads: ThreadConnections) -> None:
    reads.close()
    writer.stop()
