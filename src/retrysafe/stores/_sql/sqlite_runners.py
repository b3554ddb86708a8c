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

from retrysafe._record import Claim, Identity
from retrysafe.stores._sql.sqlite_connection import store_error
from retrysafe.stores._sql.sqlite_file import Operation, SQLiteFile
from retrysafe.stores._sql.sqlite_writer import Job, SQLiteWriter, stop_job

__all__ = ["AsyncSQLiteRunner", "SQLiteRunner"]

T = TypeVar("T")


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

    def write(self, operation: Operation[T], *, one_statement: bool = False) -> T:
        """Run a write primitive in a write transaction, group-committed with other threads'
        (`one_statement`: see `Write`)."""
        return self._run(
            functools.partial(
                self._file._execute, operation, write=True, one_statement=one_statement
            )
        )

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
    """The async face's runner: writes and claims on one writer thread, reads in worker threads.

    - Writes and claims go to the store's writer thread (`SQLiteWriter`), which commits them in
      groups and answers on the caller's event loop; there is no hop to a worker thread per
      call. A claim on a done record (a replay) changes nothing, so its group's commit writes
      nothing for it.
    - Reads (`get`, `list_records`, `stats`) run in a worker thread (anyio), on that thread's
      connection. None runs in the event loop: a read can wait inside SQLite (for a lock, a
      WAL recovery, a checkpoint restart), even with no busy timeout, and the loop must not.

    Off asyncio (trio), a write waits for the writer thread in a worker thread.

    Cancellation: a caller cancelled while its write is queued or running waits until the
    writer has run it (it may take effect, as if the call had not been cancelled), then sees
    the cancellation; the write's result is dropped. This is what a cancelled call that runs
    in a worker thread does (`anyio.to_thread.run_sync`), so the store behaves as before.
    """

    def __init__(self, file: SQLiteFile) -> None:
        self._file = file
        self._writer = SQLiteWriter(
            file.open_connection,
            schema=file.schema,
            clock=file.clock,
            path=file.path,
            check=file.identity.check,
            timeout=file.timeout,
        )
        # Stops the writer thread at `aclose`, or once the store is garbage-collected unclosed
        # (the finalizer holds neither store nor runner).
        self._shut = weakref.finalize(self, self._writer.stop)

    async def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` on the writer thread (`RecordTable.claim`)."""
        table = self._file.table
        return await self.write(
            lambda connection, now: table.claim(
                connection, identity, fingerprint, now=now, lease=lease, retention=retention
            ),
            one_statement=True,
        )

    async def write(self, operation: Operation[T], *, one_statement: bool = False) -> T:
        """Run a write primitive on the writer thread; return its outcome (`one_statement`:
        see `Write`)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): wait for the writer in a worker thread
            return await anyio.to_thread.run_sync(self._call, operation, one_statement)
        future: asyncio.Future[T] = loop.create_future()
        job = Job(operation, future=future, one_statement=one_statement)
        self._writer.submit(job)
        try:
            return await future
        except asyncio.CancelledError:
            await _outlast(job, loop)
            raise
        except sqlite3.Error as error:
            raise store_error(error, self._file.path) from error

    async def read(self, operation: Operation[T]) -> T:
        """Run a point read in a worker thread, on that thread's connection."""
        return await self.scan(operation)

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
        """Stop the writer (`SQLiteWriter.stop`)."""
        self._shut.detach()
        return self._writer.stop(job)

    def _call(self, operation: Operation[T], one_statement: bool = False) -> T:
        try:
            return self._writer.call(operation, one_statement=one_statement)
        except sqlite3.Error as error:
            raise store_error(error, self._file.path) from error

    def _scan(self, operation: Operation[T]) -> T:
        try:
            return self._file._execute(operation, write=False)
        except sqlite3.Error as error:
            raise store_error(error, self._file.path) from error


async def _outlast(job: Job[T], loop: asyncio.AbstractEventLoop) -> None:
    """Wait, shielded from cancellation, until the writer has answered a cancelled job."""
    with anyio.CancelScope(shield=True):
        while not job.settled:
            job.waiter = loop.create_future()
            try:
                await job.waiter
            except asyncio.CancelledError:  # cancelled again by plain asyncio: keep waiting
                continue
