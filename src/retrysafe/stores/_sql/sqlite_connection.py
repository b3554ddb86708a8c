"""Opening the SQLite database file, write transactions, and error mapping.

Shared by the SQLite store (`sqlite_file.py`) and the transactional mode on `sqlite3`: how a
connection is opened (WAL, the chosen durability, a busy timeout), how a write transaction
starts and ends, and which `sqlite3` errors mean "unavailable" rather than "failed".
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

from retrysafe._errors import StoreError, StoreUnavailableError
from retrysafe.stores._closing import closed_on_error

__all__ = [
    "FileIdentity",
    "Synchronous",
    "connect",
    "connect_checked",
    "store_error",
    "write_transaction",
]

Synchronous = Literal["full", "normal"]
"""The durability of a connection's commits: see `connect`."""


def connect(path: str, *, timeout: float, synchronous: Synchronous) -> sqlite3.Connection:
    """Open `path` the way the store uses it: WAL, the chosen durability, a busy timeout.

    The connection is in autocommit mode (`isolation_level=None`): transactions are explicit
    (`write_transaction`). It may be closed from another thread than the one that uses it, so
    the store can close every thread's connection at once.
    """
    connection = sqlite3.connect(
        path, timeout=timeout, isolation_level=None, check_same_thread=False
    )
    try:
        # WAL lets readers run while one writer commits, and lets processes on one machine
        # share the file. The setting is stored in the file; on a filesystem that cannot hold
        # the WAL index, SQLite keeps its rollback journal, which is slower but still correct.
        _set_wal(connection, timeout)
        # Durability is a choice per connection. FULL (the default) syncs the WAL at every
        # commit, so an acknowledged claim or outcome survives a power loss or OS crash. NORMAL
        # syncs only at checkpoints: it survives an application crash, but a power loss can
        # roll back the last commits, and a lost claim or outcome lets a retry run the effect
        # again (a second charge). Use NORMAL only where that is acceptable.
        connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    except BaseException:
        connection.close()
        raise
    return connection


class FileIdentity:
    """Which file a store opened: one deleted or replaced under a running process is refused.

    A process keeps writing to the file it opened even once that file is deleted (unlinked) or
    replaced (a backup renamed over it); a process started afterwards opens the new file. The
    two then hold two stores under one path, and a key used after the change runs its effect
    in both; a replaced file also meets the old file's WAL. So the store notes the file's
    (st_dev, st_ino) when its first connection opens it, compares before every write batch and
    claim (`check`), and on a mismatch or a missing file closes its connections (`on_broken`)
    and refuses every call from then on with `StoreUnavailableError`: stop every process
    before deleting or restoring the file, and restart a process that hit this.
    """

    __slots__ = ("_identity", "_lock", "broken", "on_broken", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self.broken: StoreUnavailableError | None = None
        self.on_broken: Callable[[], object] | None = None

    def opened(self) -> None:
        """Note the identity of the file a connection has just opened (the first one counts)."""
        with self._lock:
            if self._identity is None and self.broken is None:
                identity = self._stat()
                if identity is not None:
                    self._identity = identity
                    return
        self.check()

    def check(self) -> None:
        """Raise `StoreUnavailableError` if the file is no longer the one first opened."""
        if self.broken is not None:
            raise self.broken
        if self._identity is None:  # nothing opened yet
            return
        identity = self._stat()
        if identity == self._identity:
            return
        change = "deleted" if identity is None else "replaced by another file"
        error = StoreUnavailableError(
            f"SQLite store {self.path!r} is unavailable: its database file was {change} while"
            " this process had it open. Writing on would split the store in two (a key used"
            " in both could run its effect twice), so this store refuses every call: stop"
            " every process that uses the file before deleting or restoring it, then restart"
            " them."
        )
        with self._lock:
            first, self.broken = self.broken is None, self.broken or error
        if first and self.on_broken is not None:
            self.on_broken()
        raise self.broken

    def _stat(self) -> tuple[int, int] | None:
        """The file's (st_dev, st_ino), or None if it does not exist."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as error:  # cannot tell (a permission changed): unavailable, for now
            raise StoreUnavailableError(
                f"SQLite store {self.path!r} is unavailable: cannot check its file ({error})."
            ) from error
        return stat.st_dev, stat.st_ino


def connect_checked(
    identity: FileIdentity, path: str, *, timeout: float, synchronous: Synchronous
) -> sqlite3.Connection:
    """`connect`, then check that the file opened is the store's (`FileIdentity.opened`)."""
    identity.check()  # refused: do not create a new file at the path
    connection = connect(path, timeout=timeout, synchronous=synchronous)
    with closed_on_error(connection):
        identity.opened()
    return connection


def _set_wal(connection: sqlite3.Connection, timeout: float) -> None:
    """Put the database in WAL mode, retrying within `timeout` while it is busy.

    While another connection switches a new database to WAL (or recovers its WAL), the pragma
    fails with SQLITE_BUSY at once, without the busy handler: many threads opening their first
    connection together would fail, so it is retried briefly.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as error:
            code = getattr(error, "sqlite_errorcode", -1) & 0xFF
            if code != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.001)
        else:
            return


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """Run the block in one write transaction: BEGIN IMMEDIATE, COMMIT, or ROLLBACK on error.

    IMMEDIATE takes the database's write lock before the first read (waiting up to the busy
    timeout), so a read followed by a write cannot interleave with another writer's.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


# SQLite's primary result codes that mean "the database cannot be used right now", not "the
# request was wrong": locked past the busy timeout, the file cannot be opened or written.
_UNAVAILABLE = {
    sqlite3.SQLITE_PERM: "permission denied",
    sqlite3.SQLITE_BUSY: "the database stayed locked past the busy timeout",
    sqlite3.SQLITE_LOCKED: "a table stayed locked",
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened",
}


def store_error(error: sqlite3.Error, path: str) -> StoreError:
    """Return the retrysafe error for a sqlite3 error raised on the database at `path`."""
    # sqlite_errorcode may be an extended code (SQLITE_BUSY_SNAPSHOT); its low byte is primary.
    code = getattr(error, "sqlite_errorcode", -1) & 0xFF
    reason = _UNAVAILABLE.get(code)
    directory = os.path.dirname(path)
    if code == sqlite3.SQLITE_CANTOPEN and not os.path.isdir(directory):
        reason = f"{directory!r} is not a directory that exists (retrysafe does not create it)"
    if reason is not None:
        return StoreUnavailableError(f"SQLite store {path!r} is unavailable: {reason} ({error}).")
    return StoreError(f"SQLite store {path!r} failed: {error}.")
