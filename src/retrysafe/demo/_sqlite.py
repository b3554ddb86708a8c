"""The demo tables on SQLite: one connection under a lock, and turns for transactional writes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio

from retrysafe._errors import StoreUnavailableError
from retrysafe.demo._connections import LOCK_WAIT, Connections, TransactionConnect

__all__ = ["open_sqlite"]


def open_sqlite(path: str, *, transactional: bool) -> Connections:
    """Open the SQLite database at `path` (or `:memory:`) for the demo tables.

    Args:
        path: the database file, or `:memory:`.
        transactional: whether the file is the store's too, so payments can commit with
            their idempotency records (transactional mode).

    Raises:
        StoreUnavailableError: the file's directory is missing or the file cannot be opened.
    """
    if path != ":memory:" and not Path(path).parent.exists():
        raise StoreUnavailableError(
            f"The directory of the SQLite database {path!r} does not exist."
        )
    try:
        conn = sqlite3.connect(
            path, timeout=LOCK_WAIT, check_same_thread=False, isolation_level=None
        )
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as error:
        raise StoreUnavailableError(f"Cannot open the SQLite database {path!r}: {error}") from error
    lock = threading.Lock()

    @contextmanager
    def connect() -> Iterator[sqlite3.Connection]:
        # One connection, one transaction at a time: SQLite serialises writers anyway, and the
        # busy timeout covers the store's own connections to the same file.
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    turns = _SQLiteTurns(path) if transactional else None

    def close() -> None:
        with lock:
            conn.close()
        if turns is not None:
            turns.close()

    return Connections(
        connect,
        close,
        description=f"SQLite {path}",
        transactions=None if turns is None else turns.connect,
    )


class _SQLiteTurns:
    """The connection transactional requests write with on SQLite, one request at a time.

    SQLite has one writer at a time, and a claim in transactional mode takes the write lock at
    `BEGIN IMMEDIATE`. Rather than have every waiting request poll the lock from a worker
    thread (unfair, and each poller holds a thread the lock holder may need), the requests of
    this process take turns on a lock, in order, on one connection; the busy timeout covers
    other connections to the file (the store's, another process's). A duplicate waits its turn,
    then finds the first request's committed record and replays it.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._opened: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def connect(self) -> TransactionConnect:
        """Return a `connect` for one app: an async context manager of its connection."""
        turn = anyio.Lock()
        opened: list[sqlite3.Connection] = []

        @asynccontextmanager
        async def connection() -> AsyncIterator[sqlite3.Connection]:
            with anyio.fail_after(LOCK_WAIT):  # past it: 503, and the client retries
                await turn.acquire()
            try:
                if not opened:
                    opened.append(self._open())
                yield opened[0]
            finally:
                turn.release()

        return connection

    def _open(self) -> sqlite3.Connection:
        # Its work runs in worker threads, one request at a time (the turn).
        conn = sqlite3.connect(
            self._path, timeout=LOCK_WAIT, check_same_thread=False, isolation_level=None
        )
        with self._guard:
            self._opened.append(conn)
        return conn

    def close(self) -> None:
        """Close the connections."""
        with self._guard:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
