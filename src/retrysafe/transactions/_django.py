"""Transactional mode on Django's connection: `transaction.atomic` holds the transaction.

Django owns the transactions of its connections (`atomic` blocks, savepoints, autocommit), so
the backend here never begins or commits on its own: `begin` enters `transaction.atomic(using)`,
a savepoint when the view's atomic block is open, and `end` leaves it, rolling back with
`transaction.set_rollback`. The record statements run under it on Django's DB-API connection
(`connections[alias].connection`: a `sqlite3.Connection`, a psycopg 3 `Connection`, or on
MySQL a PyMySQL `Connection`, PyMySQL being installed as `MySQLdb`), and are the raw-driver
backends' own (`_dispatch.sync_records`): the claim, the ORM's writes and the outcome are one
transaction on one connection. A commit that fails is rolled back by `atomic` itself (a
savepoint's RELEASE, to the savepoint); `end` raises it as the store's error, translated from
the driver's error under Django's by the block's records (`commit_failed`): rolled back if the
database refused it, of unknown outcome if the connection was lost before the COMMIT's reply
(`StoreUnavailableError`).

Written sync, by hand: Django's transaction API (`atomic`, `connections`) is sync only (an
async view reaches it through `sync_to_async`), so there is no async source to generate it
from. Three things differ from the raw drivers:

- psycopg: Django's connections make client-side-binding cursors, which cannot read the
  binary results the store's statements ask for; those run with psycopg's own `Cursor`.
- SQLite: Django begins an atomic block with a deferred `BEGIN` (unless the database's
  `OPTIONS` say `"transaction_mode": "IMMEDIATE"`), so the block's first statement takes the
  write lock, before the claim reads anything: a transaction that read first fails at once
  with "database is locked" when it writes after another connection committed. (Inside the
  view's own atomic block that already read, only `"IMMEDIATE"` avoids that.)
- MySQL: `CREATE TABLE` commits the open transaction, so the records table, if missing, is
  made before the atomic block begins, and only while the server has no transaction open
  (an enclosing atomic block that has run no statement yet has none); otherwise the records
  backend refuses, asking for the table to be made first.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

from retrysafe._errors import ConfigurationError
from retrysafe._record import Claim, Identity, Record
from retrysafe.integrations._routes import missing_framework
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.stores._sql.sqlite import RecordTable
from retrysafe.stores._sql.sqlite_connection import store_error
from retrysafe.transactions import _drivers as drivers
from retrysafe.transactions._dispatch import sync_records
from retrysafe.transactions._sqlite import SQLiteRecords
from retrysafe.transactions._sync.sql_backend import DriverRecords, commit_failed
from retrysafe.transactions._sync.transaction import Records

# Django ships no type information (django-stubs is a separate project).
try:
    from django.db import (  # type: ignore[import-untyped]
        DEFAULT_DB_ALIAS,
        DatabaseError,
        connections,
        transaction,
    )
except ImportError as error:  # pragma: no cover - depends on the environment
    raise missing_framework("retrysafe.transactions.django", "Django") from error

__all__ = ["DjangoBackend", "driver_connection", "native_cursors", "table_of"]

T = TypeVar("T")

VENDORS: Final = ("sqlite", "postgresql", "mysql")
"""The Django database backends transactional mode runs on."""


def driver_connection(using: str | None) -> Any:
    """Return the DB-API connection under Django's connection for the alias `using` (None:
    the default one), opened if need be: a `sqlite3.Connection`, a psycopg `Connection`, or a
    PyMySQL `Connection` (PyMySQL installed as `MySQLdb`).

    Raises:
        TransactionManagementError: the atomic block is marked for rollback (after an error),
            where Django refuses every query too.
        ConfigurationError: a database other than SQLite, PostgreSQL through psycopg 3, or
            MySQL/MariaDB.
    """
    connection = connections[using or DEFAULT_DB_ALIAS]
    connection.validate_no_broken_transaction()
    connection.ensure_connection()
    raw = connection.connection
    if connection.vendor not in VENDORS or not (
        drivers.is_sqlite_connection(raw)
        or drivers.is_psycopg_connection(raw)
        or drivers.is_mysql_connection(raw)
    ):
        raise ConfigurationError(
            "Transactional mode on Django supports the django.db.backends.sqlite3, "
            "django.db.backends.postgresql (with psycopg 3) and django.db.backends.mysql "
            "(MySQL, MariaDB, with PyMySQL installed as MySQLdb: pymysql.install_as_MySQLdb() "
            "in settings.py) databases, not "
            f"{connection.vendor!r} through {type(raw).__module__}."
        )
    return raw


def table_of(table: str | type) -> str:
    """Return a table name as given, or the database table of a Django model class."""
    if isinstance(table, str):
        return table
    db_table = getattr(getattr(table, "_meta", None), "db_table", None)
    if not isinstance(db_table, str):
        raise TypeError(f"Expected a table name or a Django model class, not {table!r}.")
    return db_table


@contextlib.contextmanager
def native_cursors(raw: object) -> Iterator[None]:
    """Make psycopg's own cursors on `raw` meanwhile: Django's bind client-side, which cannot
    read the binary results the store's statements ask for."""
    psycopg = drivers.psycopg_module()
    if psycopg is None or not drivers.is_psycopg_connection(raw):
        yield
        return
    factory = raw.cursor_factory
    raw.cursor_factory = psycopg.Cursor
    try:
        yield
    finally:
        raw.cursor_factory = factory


class DjangoBackend:
    """Transaction control through `transaction.atomic`, record statements on its connection.

    Args:
        using: the database alias (None: `"default"`).
        table: the records table (the store's `table` option) in that database.
    """

    def __init__(self, using: str | None = None, table: str = DEFAULT_TABLE) -> None:
        self.alias: str = using or DEFAULT_DB_ALIAS
        self.table = table
        self._atomic: Any = None
        self._records: Records | None = None
        self._raw: object = None

    @property
    def connection(self) -> Any:
        """Django's connection for the alias (one per thread, as Django keeps them)."""
        return connections[self.alias]

    def in_transaction(self) -> bool:
        """Return whether the connection is in an atomic block or has autocommit off."""
        connection = self.connection
        return bool(connection.in_atomic_block) or not connection.get_autocommit()

    def aborted(self) -> bool:
        """Return whether the block's transaction was aborted: Django marked it for rollback
        (a failed ORM write, on every database; `set_rollback(True)`), or PostgreSQL aborted
        it after a statement failed."""
        records = self._records
        if self._atomic is None or records is None:
            return False
        return bool(self.connection.needs_rollback) or records.aborted()

    def begin(self) -> None:
        """Enter an atomic block (a savepoint inside one), create the table if missing, and
        hold what the claim must lock."""
        raw = driver_connection(self.alias)
        if drivers.commits_on_ddl(raw):
            # MySQL commits the open transaction on CREATE TABLE: a missing table is made
            # before the block's first statement (an enclosing block's may have run already).
            sync_records(raw, self.table).prepare()
        atomic = transaction.atomic(using=self.alias)
        atomic.__enter__()
        self._atomic = atomic
        try:
            raw = driver_connection(self.alias)
            if drivers.is_sqlite_connection(raw):
                _take_write_lock(raw, self.table, self.connection.settings_dict["NAME"])
            records = sync_records(raw, self.table)
            with native_cursors(raw):
                records.prepare()
            self._raw, self._records = raw, records
        except BaseException:
            self.end(commit=False)
            raise

    def end(self, *, commit: bool) -> None:
        """Leave the atomic block: commit (or release the savepoint), or roll it back.

        Raises:
            TransactionManagementError: asked to commit a block marked for rollback; it was
                rolled back, as Django does on leaving such a block.
            StoreError: the commit (a savepoint's RELEASE) failed; Django rolled the block
                back, and a caller's atomic block around a savepoint is still open.
            StoreUnavailableError: the connection was lost before the COMMIT's reply came
                (`commit_failed`): the server may or may not have committed, so the caller
                must retry with the same key (the retry replays or runs again, as it finds).
        """
        atomic, self._atomic = self._atomic, None
        records, self._records, self._raw = self._records, None, None
        if atomic is None:
            return
        broken: Exception | None = None
        if commit:
            try:
                self.connection.validate_no_broken_transaction()
            except Exception as error:  # raised once rolled back
                broken, commit = error, False
        if not commit:
            transaction.set_rollback(True, using=self.alias)
        savepoint = bool(self.connection.savepoint_ids)  # Django's for this block, if any
        try:
            atomic.__exit__(None, None, None)
        except DatabaseError as error:  # Django rolled back what failed to commit
            cause = self._store_error(records, error.__cause__) if commit else None
            if cause is None:
                raise
            if not savepoint:
                raise commit_failed(cause, error.__cause__) from error
            raise type(cause)(
                "The transactional block's savepoint could not be released, so it was rolled "
                "back with every write made in it: nothing of it was applied. The enclosing "
                "atomic block is still open (marked for rollback if rolling back to the "
                f"savepoint failed too). {cause}"
            ) from error
        if broken is not None:
            raise broken

    def _store_error(
        self, records: Records | None, error: BaseException | None
    ) -> Exception | None:
        """Return our error for the driver's error under Django's, as the block's `records`
        translate that driver's errors (the store's); None for one they do not know."""
        if isinstance(records, DriverRecords) and isinstance(error, records.driver_error):
            return records._translate(error)  # psycopg, MySQL
        if isinstance(records, SQLiteRecords) and isinstance(error, sqlite3.Error):
            return store_error(error, str(self.connection.settings_dict["NAME"]))
        return None

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim in the atomic block."""
        return self._run(
            lambda records: records.claim(
                identity, fingerprint, now=now, lease=lease, retention=retention
            )
        )

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome on the held record, after the ORM's writes."""
        return self._run(
            lambda records: records.complete(identity, token, outcome, now=now, retention=retention)
        )

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease."""
        return self._run(lambda records: records.renew(identity, token, now=now, lease=lease))

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase."""
        return self._run(
            lambda records: records.checkpoint(identity, token, recovery_point, now=now)
        )

    def _run(self, statement: Callable[[Records], T]) -> T:
        """Run a record statement, as Django runs a query: never in a block marked broken."""
        records = self._records
        if records is None:
            raise RuntimeError("The atomic block has not begun.")
        self.connection.validate_no_broken_transaction()
        with native_cursors(self._raw):
            return statement(records)


def _take_write_lock(raw: sqlite3.Connection, table: str, path: object) -> None:
    """Take SQLite's write lock with the block's first statement (the records backend's own
    lock statement); a table that does not exist yet is created by a write, which locks too."""
    name = RecordTable(table).name
    # The table name was validated by RecordTable, and SQL cannot bind an identifier.
    lock = f'UPDATE "{name}" SET id = id WHERE 0'  # noqa: S608
    try:
        raw.execute(lock)
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise store_error(error, str(path)) from error
