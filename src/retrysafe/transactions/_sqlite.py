"""Transactional mode on a `sqlite3` connection, with the SQLite store's own statements.

`sqlite3` has no async face, so this module is written sync, by hand: the record statements
(`SQLiteRecords`), transaction control (`SQLiteBackend`) and the write helpers' executor
(`SQLiteExecutor`).

The claim reads the record and then writes it, so it must hold SQLite's write lock from before
the read: a transaction this module opens is `BEGIN IMMEDIATE`; inside a transaction the
caller opened (a savepoint), or one that SQLAlchemy opened, a write that changes nothing takes
the lock first. A duplicate therefore waits on the write lock (up to the connection's busy
timeout) until the first transaction commits, and then reads the finished record.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.stores._sql.sqlite import RecordTable
from retrysafe.stores._sql.sqlite_connection import store_error
from retrysafe.transactions._sync.sql_backend import commit_failed
from retrysafe.transactions._write_sql import SQLITE, Row

__all__ = ["SQLiteBackend", "SQLiteExecutor", "SQLiteRecords"]

T = TypeVar("T")


class SQLiteRecords:
    """The store's record statements on a connection that is inside a transaction.

    Args:
        connection: the caller's connection.
        table: the records table (the SQLite store's `table` option).
    """

    def __init__(self, connection: sqlite3.Connection, table: str = DEFAULT_TABLE) -> None:
        self.connection = connection
        self.table = RecordTable(table)

    def prepare(self) -> None:
        """Make sure the transaction holds the write lock, creating the table if missing.

        The lock comes first: in a deferred transaction, a read (such as `CREATE TABLE IF NOT
        EXISTS` on a table that exists) would start a read snapshot, and a commit by another
        connection before the lock would then make the lock fail at once ("database is
        locked", with no busy wait). A table that is missing fails the lock before it runs;
        creating it is a write, which takes the lock.
        """
        # The table name was validated by RecordTable, and SQL cannot bind an identifier.
        lock = f'UPDATE "{self.table.name}" SET id = id WHERE 0'  # noqa: S608
        try:
            self.connection.execute(lock)
        except sqlite3.Error as error:
            missing = isinstance(error, sqlite3.OperationalError) and "no such table" in str(error)
            if not missing:
                raise store_error(error, _path(self.connection)) from error
            self._run(lambda: self.table.create_schema(self.connection))
            self._run(lambda: self.connection.execute(lock))

    def aborted(self) -> bool:
        """Return False: SQLite fails only the statement that failed, and the transaction goes
        on, so a caught error leaves it able to commit what else it wrote."""
        return False

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim."""
        return self._run(
            lambda: self.table.claim(
                self.connection, identity, fingerprint, now=now, lease=lease, retention=retention
            )
        )

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome on the held record."""
        return self._run(
            lambda: self.table.complete(
                self.connection, identity, token, outcome, now=now, retention=retention
            )
        )

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease."""
        return self._run(
            lambda: self.table.renew(self.connection, identity, token, now=now, lease=lease)
        )

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase."""
        return self._run(
            lambda: self.table.checkpoint(self.connection, identity, token, recovery_point, now=now)
        )

    def _run(self, call: Callable[[], T]) -> T:
        """Run one of the store's calls with plain rows, turning sqlite3 errors into ours."""
        with _plain_rows(self.connection):
            try:
                return call()
            except sqlite3.Error as error:
                raise store_error(error, _path(self.connection)) from error


class SQLiteBackend(SQLiteRecords):
    """Transaction control on a `sqlite3` connection, plus the record statements.

    Outside a transaction it runs `BEGIN IMMEDIATE` ... `COMMIT`; inside one the caller opened,
    a savepoint, which commits when the caller's transaction does.
    """

    def __init__(self, connection: sqlite3.Connection, table: str = DEFAULT_TABLE) -> None:
        super().__init__(connection, table)
        self._savepoint: str | None = None

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open."""
        return self.connection.in_transaction

    def begin(self) -> None:
        """Open the transaction or savepoint and take the write lock."""
        if self.connection.in_transaction:
            self._savepoint = f"retrysafe_{secrets.token_hex(6)}"
            self._run(lambda: self.connection.execute(f'SAVEPOINT "{self._savepoint}"'))
        else:
            self._savepoint = None
            self._run(lambda: self.connection.execute("BEGIN IMMEDIATE"))
        try:
            self.prepare()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.end(commit=False)
            raise

    def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` opened.

        Raises:
            StoreError: the commit failed (`StoreUnavailableError` when the database stayed
                locked); the transaction was rolled back.
        """
        savepoint, self._savepoint = self._savepoint, None
        if savepoint is None:
            if commit:
                self._commit()
            else:
                self.connection.rollback()
            return
        if not commit:
            self.connection.execute(f'ROLLBACK TO SAVEPOINT "{savepoint}"')
        self.connection.execute(f'RELEASE SAVEPOINT "{savepoint}"')

    def _commit(self) -> None:
        """Commit the transaction `begin` opened, or roll it back if the commit fails.

        A COMMIT refused with SQLITE_BUSY (in the rollback journal mode, another connection
        still reads the file) leaves the transaction open: later blocks on the connection would
        run as savepoints inside it, and none of them would ever commit.
        """
        try:
            self.connection.commit()
        except sqlite3.Error as error:
            cause = store_error(error, _path(self.connection))
            try:
                self.connection.rollback()
            except sqlite3.Error as failed:
                raise type(cause)(
                    f"The transaction could not commit, and rolling it back failed too "
                    f"({failed}): nothing of it was applied, but close the connection, whose "
                    f"transaction is still open. {cause}"
                ) from error
            raise commit_failed(cause) from error


class SQLiteExecutor:
    """The write helpers' statements on a `sqlite3` connection, in its open transaction."""

    dialect = SQLITE

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def rows(self, statement: str, params: Sequence[object]) -> list[Row]:
        """Run `statement`; return its rows as dicts."""
        cursor = self.connection.cursor()
        cursor.row_factory = None  # tuples, whatever the connection's row factory
        try:
            cursor.execute(statement, tuple(params))
            names = [column[0] for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            cursor.close()


@contextlib.contextmanager
def _plain_rows(connection: sqlite3.Connection) -> Iterator[None]:
    """Read tuples of plain values whatever row and text factories the caller set."""
    row_factory, text_factory = connection.row_factory, connection.text_factory
    connection.row_factory, connection.text_factory = None, str
    try:
        yield
    finally:
        connection.row_factory, connection.text_factory = row_factory, text_factory


def _path(connection: sqlite3.Connection) -> str:
    """Return the main database's file name, for error messages."""
    with contextlib.suppress(sqlite3.Error):
        for _, name, path in connection.execute("PRAGMA database_list"):
            if name == "main":
                return str(path)
    return "<unknown>"
