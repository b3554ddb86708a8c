# Generated from transactions/_async/mysql.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""Transactional mode on a MySQL or MariaDB connection, with the MySQL store's own primitives.

Written once, async, for pymysql connections; the twin for PyMySQL ones is generated. The record
statements are the store's (`stores/_async/mysql_records.py`), run on the caller's connection,
InnoDB tables only. The claim is the store's `INSERT ... ON DUPLICATE KEY UPDATE` on the key's
primary key: inside the caller's transaction it inserts the record uncommitted, so a
duplicate's claim waits on that row's lock until the first transaction ends, then finds the
finished record (after a commit: a replay) or inserts its own (after a rollback). The record is
then read `FOR UPDATE`, a locking read that sees the latest committed row rather than the
transaction's snapshot, so REPEATABLE READ (InnoDB's default) and READ COMMITTED both work.

What it shares with psycopg's backend is in `sql_backend.py`. Where MySQL differs from
PostgreSQL, and what this module does about it:

- A lock wait ends after `innodb_lock_wait_timeout` seconds with error 1205; while claiming,
  that is another transaction holding the key: `InFlightError`.
- Duplicates that waited on a claim that then rolls back deadlock among themselves (1213):
  InnoDB rolls the victims' whole transactions back. The claim raises `DeadlockRollbackError`,
  which `begin_claim` answers by beginning again when the transaction was its own.
- `CREATE TABLE` commits the open transaction, so the records table is created only where no
  transaction is open: before `START TRANSACTION`, or when the server says none has begun (a
  session's or Django's fresh transaction). Inside an open one a missing table is refused.
- The connection's cursor class may be anything (`DictCursor`): the store's statements ask for
  their own.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence
from typing import Any, Final

import pymysql  # type: ignore[import-untyped]

from retrysafe._errors import ConfigurationError
from retrysafe._record import Claim, Identity
from retrysafe.stores._sync.mysql_records import MySQLRecords as StoreRecords
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.stores._sql.mysql import mysql_table
from retrysafe.stores._sql.mysql_connection import DEADLOCK, LOCK_WAIT_TIMEOUT, store_error
from retrysafe.transactions._sync.sql_backend import (
    DriverBackend,
    DriverRecords,
    commit_failed,
)
from retrysafe.transactions._drivers import MySQLConnection
from retrysafe.transactions._state import DeadlockRollbackError
from retrysafe.transactions._write_sql import MYSQL, Row, error_number

__all__ = ["MySQLBackend", "MySQLExecutor", "MySQLRecords"]

_IN_TRANSACTION: Final = 1  # SERVER_STATUS_IN_TRANS: the server has a transaction open
_NO_SAVEPOINT: Final = 1305  # ER_SP_DOES_NOT_EXIST: the transaction that had it is gone
_NO_SUCH_TABLE: Final = 1146  # ER_NO_SUCH_TABLE


def server_in_transaction(connection: object) -> bool | None:
    """Return whether the server has a transaction open on `connection`, as its last reply
    said; None if the driver does not keep the status flags (both of PyMySQL's faces do)."""
    status = getattr(connection, "server_status", None)
    return bool(status & _IN_TRANSACTION) if isinstance(status, int) else None


class MySQLRecords(
    DriverRecords[MySQLConnection, StoreRecords, pymysql.MySQLError]
):
    """The store's record statements on a MySQL connection inside a transaction.

    Args:
        connection: the caller's connection (any cursor class).
        table: the records table (the MySQL store's `table` option).
    """

    driver_error = pymysql.MySQLError
    commits_on_ddl = True

    def __init__(self, connection: MySQLConnection, table: str = DEFAULT_TABLE) -> None:
        super().__init__(connection, StoreRecords(mysql_table(table)))

    def _translate(self, error: pymysql.MySQLError) -> Exception:
        """Return our error for a driver error: a deadlock's, or the store's."""
        if error_number(error) == DEADLOCK:
            return DeadlockRollbackError(
                "MySQL rolled back the transaction to break a deadlock on the idempotency key "
                "(error 1213), with every write made in it; run the transaction again."
            )
        return store_error(error)

    def _lock_wait_timed_out(self, error: pymysql.MySQLError) -> bool:
        """Return whether `innodb_lock_wait_timeout` ended a wait on a row lock (1205)."""
        return error_number(error) == LOCK_WAIT_TIMEOUT

    def _table_missing(self, error: pymysql.MySQLError) -> bool:
        """Return whether `error` is 1146 (no such table)."""
        return error_number(error) == _NO_SUCH_TABLE

    def _store_claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim, which reads the record `FOR UPDATE` after its upsert."""
        return self._records.claim(
            self.connection, identity, fingerprint, now=now, lease=lease, retention=retention
        )

    def _address(self) -> tuple[str, ...]:
        """Return the connection's host, port and database."""
        raw: Any = self.connection
        return tuple(str(getattr(raw, name, None)) for name in ("host", "port", "db"))

    def _creation_refusal(self) -> str | None:
        """Refuse to create a missing table unless the server says no transaction is open."""
        if server_in_transaction(self.connection) is False:
            return None
        return (
            f"The records table {self.table.name!r} does not exist, and MySQL would commit "
            "the transaction open on this connection to create it. Create it first: open "
            "the MySQL store on it once, or run this outside any transaction."
        )


class MySQLBackend(MySQLRecords, DriverBackend):
    """Transaction control on a MySQL connection.

    Outside a transaction it creates the table if missing, then runs `START TRANSACTION` ...
    `COMMIT`; inside one (the server says a transaction is open: autocommit off and a statement
    since the last commit), a savepoint that commits with the caller's transaction.
    """

    def __init__(self, connection: MySQLConnection, table: str = DEFAULT_TABLE) -> None:
        super().__init__(connection, table)
        self._savepoint: str | None = None

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open."""
        status = server_in_transaction(self.connection)
        if status is None:
            raise ConfigurationError(
                f"{type(self.connection).__module__} does not tell whether a transaction is "
                "open; transactional mode on MySQL drives PyMySQL and pymysql connections."
            )
        return status

    def begin(self) -> None:
        """Open the transaction (after creating the table if missing) or the savepoint."""
        if not self.in_transaction():
            self._savepoint = None
            self.prepare()
            with self._translated():
                self.connection.begin()
            return
        self._savepoint = f"retrysafe_{secrets.token_hex(6)}"
        with self._translated():
            self._execute(f"SAVEPOINT {self._savepoint}")
        self._prepare_opened()

    def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` opened.

        Raises:
            StoreError: the commit failed; the transaction was rolled back.
        """
        savepoint, self._savepoint = self._savepoint, None
        if savepoint is None:
            if commit:
                self._commit()
                return
            with self._translated():
                self.connection.rollback()
            return
        try:
            if not commit:
                self._execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
            self._execute(f"RELEASE SAVEPOINT {savepoint}")
        except Exception as error:
            # A deadlock rolls the caller's whole transaction back, the savepoint with it: what
            # was to be rolled back is gone already, and the claim's error says so.
            gone = not commit and error_number(error) == _NO_SAVEPOINT
            if not gone:
                with self._translated():
                    raise

    def _commit(self) -> None:
        """Commit the transaction `begin` opened; if that fails, roll it back (the server
        ends most transactions whose COMMIT fails, but not necessarily every one)."""
        try:
            self.connection.commit()
        except pymysql.MySQLError as error:
            with contextlib.suppress(pymysql.MySQLError):
                self.connection.rollback()  # on a lost connection, nothing to roll back
            raise commit_failed(self._translate(error), error) from error

    def _execute(self, statement: str) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(statement)


class MySQLExecutor:
    """The write helpers' statements on a MySQL connection, in its open transaction."""

    dialect = MYSQL

    def __init__(self, connection: MySQLConnection) -> None:
        self.connection = connection

    def rows(self, statement: str, params: Sequence[object]) -> list[Row]:
        """Run `statement`; return its rows as dicts, whatever the connection's cursor class.

        The values are written in as literals the connection escapes (bytes in hexadecimal),
        as the store's statements are (`stores/_sql/mysql.py`'s `render`): pymysql's own
        escaping of bytes fails with PyMySQL 1.2.
        """
        literals = tuple(_literal(self.connection, value) for value in params)
        with self.connection.cursor() as cursor:
            cursor.execute(statement % literals)
            if cursor.description is None:
                return []
            names = [column[0] for column in cursor.description]
            found = cursor.fetchall()
        return [_as_dict(names, row) for row in found]


def _literal(connection: Any, value: object) -> str:
    """Return `value` as a SQL literal: bytes in hexadecimal, anything else as `connection`
    escapes it."""
    return f"X'{value.hex()}'" if isinstance(value, bytes) else str(connection.escape(value))


def _as_dict(names: list[str], row: Any) -> Row:
    """Return a row as a dict, whether the cursor made tuples or dicts (`DictCursor`)."""
    return dict(row) if isinstance(row, dict) else dict(zip(names, row, strict=True))
