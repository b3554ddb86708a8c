"""Transactional mode when the end of a transaction goes wrong (B29): a commit that fails, and a
records table whose creation rolls back or that is dropped.

A failed commit must leave nothing open and nothing applied, and say so with retrysafe's
`StoreError` (the driver's error chained): a transaction left open would swallow the next
blocks on the connection as savepoints that never commit; a SQLAlchemy session left with a
failed transaction refuses every later statement. That holds on the raw drivers, SQLAlchemy
sessions and Django (in a process of its own: Django's settings are per process). The records
table is remembered as ready only once it is known committed, and forgotten when a statement
finds it missing. Every test runs on a real database: SQLite files, PostgreSQL, MariaDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymysql
import pytest

from retrysafe import Identity, StoreError, StoreUnavailableError, transactions
from retrysafe.transactions._sync.mysql import MySQLBackend
from retrysafe.transactions._sync.transaction import Transaction
from tests.conftest import drop_mysql_tables, drop_postgres_tables, unique_name
from tests.transactions.conftest import Database

COMMIT_FAILED = "could not commit, so it was rolled back"


def _identity(key: str) -> Identity:
    return Identity("payments", "tenant-a", key)


# SQLite: a reader refuses the COMMIT (SQLITE_BUSY) in the rollback journal mode.


@pytest.fixture
def journal_db(tmp_path: Path) -> Path:
    """A SQLite file in the default rollback journal mode (not WAL), with a payments table."""
    path = tmp_path / "journal.db"
    with contextlib.closing(sqlite3.connect(path)) as setup:
        setup.execute("CREATE TABLE payments (id INTEGER PRIMARY KEY, key TEXT, amount INTEGER)")
        setup.commit()
    return path


def _sqlite_pay(conn: sqlite3.Connection, key: str, amount: int) -> tuple[bool, dict[str, Any]]:
    """Pay once in transactional mode on `conn`; return (replayed, receipt)."""
    with transactions.sqlite(conn, identity=_identity(key), fingerprint=str(amount)) as tx:
        if tx.replay:
            assert tx.outcome is not None
            return True, json.loads(tx.outcome)
        cursor = conn.execute("INSERT INTO payments (key, amount) VALUES (?, ?)", (key, amount))
        receipt = {"id": cursor.lastrowid, "amount": amount}
        tx.complete(json.dumps(receipt).encode())
    return False, receipt


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Hold a read transaction (a SHARED lock) on the file: a writer's COMMIT is refused."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM payments").fetchone()
        try:
            yield
        finally:
            reader.execute("COMMIT")


def _committed(path: Path) -> tuple[list[tuple[Any, ...]], list[bytes]]:
    """Return the payments (key, amount) and the record keys committed in the file."""
    with contextlib.closing(sqlite3.connect(path)) as check:
        payments = check.execute("SELECT key, amount FROM payments ORDER BY id").fetchall()
        keys = [row[0] for row in check.execute("SELECT key FROM retrysafe_records")]
    return payments, keys


def test_b29_sqlite_commit_refused_by_a_reader_rolls_back_and_raises_store_unavailable(
    journal_db: Path,
) -> None:
    """A COMMIT refused with "database is locked" rolls the transaction back and raises
    `StoreUnavailableError` with the sqlite3 error chained; the connection has no transaction
    left open, and nothing of the block was applied."""
    # The busy timeout bounds the commit's wait on the reader.
    with contextlib.closing(sqlite3.connect(journal_db, timeout=0.1)) as conn:
        _sqlite_pay(conn, "warm-up", 1)  # creates the records table
        with _reading(journal_db), pytest.raises(StoreUnavailableError) as raised:
            _sqlite_pay(conn, "k-1", 100)
        assert COMMIT_FAILED in str(raised.value)
        assert "database is locked" in str(raised.value)
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        assert not conn.in_transaction
        assert _committed(journal_db) == ([("warm-up", 1)], [b"warm-up"])


def test_b29_sqlite_blocks_after_a_failed_commit_commit_on_their_own(journal_db: Path) -> None:
    """After a failed commit, the next block on the same connection is a transaction of its own
    that commits at once, and a retry of the failed key runs again rather than replaying
    writes that never committed."""
    with contextlib.closing(sqlite3.connect(journal_db, timeout=0.1)) as conn:
        _sqlite_pay(conn, "warm-up", 1)
        with _reading(journal_db), pytest.raises(StoreError):
            _sqlite_pay(conn, "k-1", 100)
        assert _sqlite_pay(conn, "k-2", 250)[0] is False
        assert not conn.in_transaction
        assert _committed(journal_db) == ([("warm-up", 1), ("k-2", 250)], [b"warm-up", b"k-2"])
        replayed, _ = _sqlite_pay(conn, "k-1", 100)
        assert replayed is False
    payments, keys = _committed(journal_db)
    assert payments == [("warm-up", 1), ("k-2", 250), ("k-1", 100)]
    assert sorted(keys) == [b"k-1", b"k-2", b"warm-up"]


# PostgreSQL: a deferred foreign key fails the COMMIT itself.


@pytest.fixture
def pg_deferred(postgres_url: str) -> Iterator[tuple[str, str, str]]:
    """(records table, parents, children): children reference parents by a foreign key that
    PostgreSQL checks only at COMMIT."""
    records, parents, children = (unique_name(p) for p in ("rs_tx", "rs_parent", "rs_child"))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {parents} (id int PRIMARY KEY)")
        conn.execute(
            f"CREATE TABLE {children} (key text PRIMARY KEY, parent int REFERENCES {parents} "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
    try:
        yield records, parents, children
    finally:
        drop_postgres_tables(postgres_url, records, children, parents)


def _pg_pay(
    conn: psycopg.Connection[Any], table: str, children: str, key: str, parent: int
) -> bool:
    """Write a child of `parent` for `key` in transactional mode; return whether it replayed."""
    with transactions.psycopg(conn, identity=_identity(key), fingerprint="f", table=table) as tx:
        if tx.replay:
            return True
        conn.execute(f"INSERT INTO {children} VALUES (%s, %s)", (key, parent))  # noqa: S608 - a unique_name() table
        tx.complete(b"paid")
    return False


async def _apg_pay(
    conn: psycopg.AsyncConnection[Any], table: str, children: str, key: str, parent: int
) -> bool:
    """The async twin of `_pg_pay`."""
    async with transactions.psycopg(
        conn, identity=_identity(key), fingerprint="f", table=table
    ) as tx:
        if tx.replay:
            return True
        await conn.execute(f"INSERT INTO {children} VALUES (%s, %s)", (key, parent))  # noqa: S608 - a unique_name() table
        tx.complete(b"paid")
    return False


def _pg_rows(url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement).fetchall()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_b29_postgres_commit_that_fails_raises_store_error(
    postgres_url: str, pg_deferred: tuple[str, str, str], mode: str
) -> None:
    """A COMMIT that PostgreSQL refuses (a deferred foreign key) raises `StoreError` saying
    the transaction was rolled back, the driver's error chained; nothing was applied, the
    connection is idle, and a retry runs again."""
    records, parents, children = pg_deferred

    async def run_async() -> tuple[BaseException | None, bool, bool]:
        conn = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
        try:
            failure: BaseException | None = None
            try:
                await _apg_pay(conn, records, children, "k-1", 7)
            except StoreError as error:
                failure = error
            idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            await conn.execute(f"INSERT INTO {parents} VALUES (7)")  # noqa: S608 - a unique_name() table
            return failure, idle, await _apg_pay(conn, records, children, "k-1", 7)
        finally:
            await conn.close()

    def run_sync() -> tuple[BaseException | None, bool, bool]:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            failure: BaseException | None = None
            try:
                _pg_pay(conn, records, children, "k-1", 7)
            except StoreError as error:
                failure = error
            idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            conn.execute(f"INSERT INTO {parents} VALUES (7)")  # noqa: S608 - a unique_name() table
            return failure, idle, _pg_pay(conn, records, children, "k-1", 7)

    failure, idle, retry_replayed = asyncio.run(run_async()) if mode == "async" else run_sync()
    assert failure is not None
    assert COMMIT_FAILED in str(failure)
    assert isinstance(failure.__cause__, psycopg.errors.ForeignKeyViolation)
    assert idle
    assert retry_replayed is False  # the failed attempt left no record to replay
    assert _pg_rows(postgres_url, f"SELECT key, parent FROM {children}") == [("k-1", 7)]  # noqa: S608 - a unique_name() table
    assert _pg_rows(postgres_url, f"SELECT key FROM {records}") == [(b"k-1",)]  # noqa: S608 - a unique_name() table


# MySQL/MariaDB: the connection is killed between the outcome and the COMMIT.


class _KilledBeforeCommit(MySQLBackend):
    """The PyMySQL backend, whose connection another session kills just before it commits."""

    def __init__(self, connection: Any, table: str, killer: Any) -> None:
        super().__init__(connection, table)
        self._killer = killer

    def end(self, *, commit: bool) -> None:
        if commit:
            with self._killer.cursor() as cursor:
                cursor.execute("KILL CONNECTION %s", (self.connection.thread_id(),))
        super().end(commit=commit)


def test_b29_mysql_commit_that_fails_raises_store_error_and_applies_nothing(
    mysql_database: Database,
) -> None:
    """A COMMIT that fails (the connection was killed after the outcome was written) raises
    `StoreError` saying the outcome is unknown (the reply was lost), the driver's error
    chained; here nothing was applied, and a retry on a new connection runs again."""
    db = mysql_database
    conn = db.connect()
    killer = db.connect(autocommit=True)
    insert = f"INSERT INTO {db.payments} VALUES ('p-1', %s, 100)"  # noqa: S608 - a unique_name() table
    try:
        backend = _KilledBeforeCommit(conn, db.table, killer)

        def pay() -> None:
            with Transaction(backend, identity=_identity("k-1"), fingerprint="f") as tx:
                conn.cursor().execute(insert, ("k-1",))
                tx.complete(b"paid")

        with pytest.raises(StoreError) as raised:
            pay()
    finally:
        killer.close()
        with contextlib.suppress(pymysql.MySQLError):
            conn.close()
    # The connection was lost before the COMMIT's reply: the client cannot know the outcome.
    assert "may or may not have committed" in str(raised.value)
    assert isinstance(raised.value.__cause__, pymysql.MySQLError)
    assert db.payment_rows() == []
    assert db.execute(f"SELECT `key` FROM {db.table}") == []  # noqa: S608 - a unique_name() table
    retry = db.connect()
    try:
        with transactions.mysql(
            retry, identity=_identity("k-1"), fingerprint="f", table=db.table
        ) as tx:
            assert not tx.replay
            retry.cursor().execute(insert, ("k-1",))
            tx.complete(b"paid")
    finally:
        retry.close()
    assert db.payment_rows() == [("p-1", "k-1", 100)]


# The records table: remembered only once committed, forgotten when found missing.


def _pg_complete(conn: psycopg.Connection[Any], table: str, key: str) -> None:
    with transactions.psycopg(conn, identity=_identity(key), fingerprint="f", table=table) as tx:
        tx.complete(b"ok")


async def _apg_complete(conn: psycopg.AsyncConnection[Any], table: str, key: str) -> None:
    async with transactions.psycopg(
        conn, identity=_identity(key), fingerprint="f", table=table
    ) as tx:
        tx.complete(b"ok")


@pytest.fixture
def pg_table(postgres_url: str) -> Iterator[str]:
    """A records table name of this test's own, dropped afterwards."""
    table = unique_name("rs_tx")
    try:
        yield table
    finally:
        drop_postgres_tables(postgres_url, table)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_b29_records_table_created_in_a_rolled_back_transaction_is_made_again(
    postgres_url: str, pg_table: str, mode: str
) -> None:
    """A records table created by a block inside the caller's transaction, then found by a
    second block in it, is not remembered: after the caller rolls back, the next block
    creates it again and commits."""

    async def caller_rolls_back_async() -> None:
        conn = await psycopg.AsyncConnection.connect(postgres_url)  # autocommit off
        try:
            await conn.execute("SELECT 1")  # the caller's transaction is open
            await _apg_complete(conn, pg_table, "a")  # creates the table, uncommitted
            await _apg_complete(conn, pg_table, "b")  # finds it, still uncommitted
            await conn.rollback()
        finally:
            await conn.close()
        later = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
        try:
            await _apg_complete(later, pg_table, "c")
        finally:
            await later.close()

    if mode == "async":
        asyncio.run(caller_rolls_back_async())
    else:
        with psycopg.connect(postgres_url) as conn:  # autocommit off
            conn.execute("SELECT 1")
            _pg_complete(conn, pg_table, "a")
            _pg_complete(conn, pg_table, "b")
            conn.rollback()
        with psycopg.connect(postgres_url, autocommit=True) as later:
            _pg_complete(later, pg_table, "c")
    assert _pg_rows(postgres_url, f"SELECT key FROM {pg_table}") == [(b"c",)]  # noqa: S608 - a unique_name() table


def test_b29_dropped_postgres_records_table_is_created_again(
    postgres_url: str, pg_table: str
) -> None:
    """A records table remembered as ready and then dropped fails the one block that finds it
    missing with `StoreError`; the next block creates it again."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        _pg_complete(conn, pg_table, "a")  # created in that block's transaction
        _pg_complete(conn, pg_table, "a2")  # found by a transaction that wrote nothing: remembered
        drop_postgres_tables(postgres_url, pg_table)
        with pytest.raises(StoreError) as raised:
            _pg_complete(conn, pg_table, "b")
        assert isinstance(raised.value.__cause__, psycopg.errors.UndefinedTable)
        _pg_complete(conn, pg_table, "c")
    assert _pg_rows(postgres_url, f"SELECT key FROM {pg_table}") == [(b"c",)]  # noqa: S608 - a unique_name() table


def _mysql_complete(conn: Any, table: str, key: str) -> None:
    with transactions.mysql(conn, identity=_identity(key), fingerprint="f", table=table) as tx:
        tx.complete(b"ok")


def test_b29_dropped_mysql_records_table_is_created_again(mysql_database: Database) -> None:
    """On MySQL too, a remembered records table that was dropped fails the one block that finds
    it missing (error 1146) with `StoreError`; the next block creates it again."""
    db = mysql_database
    conn = db.connect(autocommit=True)
    try:
        _mysql_complete(conn, db.table, "a")  # created (MySQL's DDL commits): remembered
        drop_mysql_tables(db.dsn, db.table)
        with pytest.raises(StoreError) as raised:
            _mysql_complete(conn, db.table, "b")
        cause = raised.value.__cause__
        assert isinstance(cause, pymysql.MySQLError)
        assert cause.args[0] == 1146
        _mysql_complete(conn, db.table, "c")
    finally:
        conn.close()
    assert db.execute(f"SELECT `key` FROM {db.table}") == [(b"c",)]  # noqa: S608 - a unique_name() table


# SQLAlchemy sessions: the session's commit fails the same way, and the session must stay usable.


def _session_pay(session: Any, key: str, amount: int) -> bool:
    """Pay once in transactional mode on a SQLAlchemy `session`; return whether it replayed."""
    from sqlalchemy import text

    with transactions.sqlalchemy(session, identity=_identity(key), fingerprint=str(amount)) as tx:
        if tx.replay:
            return True
        insert = text("INSERT INTO payments (key, amount) VALUES (:key, :amount)")
        session.execute(insert, {"key": key, "amount": amount})
        tx.complete(b"paid")
    return False


@contextlib.contextmanager
def _sqlite_session(path: Path) -> Iterator[Any]:
    """A `Session` on the SQLite file, whose busy timeout bounds a commit's wait on a reader."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def test_b29_sqlalchemy_sqlite_commit_refused_rolls_the_session_back(journal_db: Path) -> None:
    """A session's COMMIT refused with "database is locked" rolls the session back and raises
    `StoreUnavailableError`, SQLAlchemy's error chained (the sqlite3 error under it); the
    session is usable at once: the next block commits on its own, and a retry of the failed
    key runs again (before: a raw `OperationalError`, and a session "in 'prepared' state"
    that refused every later block)."""
    from sqlalchemy.exc import OperationalError

    with _sqlite_session(journal_db) as session:
        _session_pay(session, "warm-up", 1)  # creates the records table
        with _reading(journal_db), pytest.raises(StoreUnavailableError) as raised:
            _session_pay(session, "k-1", 100)
        assert COMMIT_FAILED in str(raised.value)
        assert "database is locked" in str(raised.value)
        cause = raised.value.__cause__
        assert isinstance(cause, OperationalError)
        assert isinstance(cause.orig, sqlite3.OperationalError)
        assert not session.in_transaction()
        assert _committed(journal_db) == ([("warm-up", 1)], [b"warm-up"])
        assert _session_pay(session, "k-2", 250) is False
        assert not session.in_transaction()
        assert _committed(journal_db) == ([("warm-up", 1), ("k-2", 250)], [b"warm-up", b"k-2"])
        assert _session_pay(session, "k-1", 100) is False  # nothing to replay: it runs again
    payments, keys = _committed(journal_db)
    assert payments == [("warm-up", 1), ("k-2", 250), ("k-1", 100)]
    assert sorted(keys) == [b"k-1", b"k-2", b"warm-up"]


def test_b29_sqlalchemy_savepoint_release_refused_rolls_back_to_it(journal_db: Path) -> None:
    """Inside the caller's transaction that has only read, the block's savepoint is SQLite's
    outermost, so its RELEASE is the COMMIT a reader refuses: the block is rolled back to the
    savepoint and `StoreUnavailableError` raised, the caller's transaction stays open for the
    caller, and committing it applies nothing of the block (before: a raw `OperationalError`
    and a session refusing every statement; SQLAlchemy's own rollback of a savepoint whose
    RELEASE failed emits nothing, so the caller's commit would apply the failed block)."""
    from sqlalchemy import text

    with _sqlite_session(journal_db) as session:
        _session_pay(session, "warm-up", 1)
        session.commit()
        session.execute(text("SELECT count(*) FROM payments")).scalar_one()  # the caller's read
        with _reading(journal_db), pytest.raises(StoreUnavailableError) as raised:
            _session_pay(session, "k-1", 100)
        assert "savepoint could not be released, so it was rolled back" in str(raised.value)
        assert "still open" in str(raised.value)
        assert session.in_transaction()  # the caller's, to end
        session.commit()
        assert _committed(journal_db) == ([("warm-up", 1)], [b"warm-up"])
        assert _session_pay(session, "k-1", 100) is False  # runs again
        session.commit()
    assert _committed(journal_db) == ([("warm-up", 1), ("k-1", 100)], [b"warm-up", b"k-1"])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_b29_sqlalchemy_postgres_commit_that_fails_raises_store_error(
    postgres_url: str, pg_deferred: tuple[str, str, str], mode: str
) -> None:
    """A session's COMMIT that PostgreSQL refuses (a deferred foreign key) raises `StoreError`
    saying the transaction was rolled back, with psycopg's error under SQLAlchemy's; the
    `Session` or `AsyncSession` is usable at once, and a retry runs again."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    records, parents, children = pg_deferred
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    insert = text(f"INSERT INTO {children} VALUES (:key, 7)")  # noqa: S608 - a unique_name() table
    parent = text(f"INSERT INTO {parents} VALUES (7)")  # noqa: S608 - a unique_name() table

    def options(key: str) -> dict[str, Any]:
        return {"identity": _identity(key), "fingerprint": "f", "table": records}

    async def run_async() -> tuple[BaseException | None, bool, bool]:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        async def pay(session: AsyncSession, key: str) -> bool:
            async with transactions.sqlalchemy(session, **options(key)) as tx:
                if tx.replay:
                    return True
                await session.execute(insert, {"key": key})
                tx.complete(b"paid")
            return False

        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session:
                failure: BaseException | None = None
                try:
                    await pay(session, "k-1")
                except StoreError as error:
                    failure = error
                ended = not session.in_transaction()
                await session.execute(parent)
                await session.commit()
                return failure, ended, await pay(session, "k-1")
        finally:
            await engine.dispose()

    def run_sync() -> tuple[BaseException | None, bool, bool]:
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session

        def pay(session: Session, key: str) -> bool:
            with transactions.sqlalchemy(session, **options(key)) as tx:
                if tx.replay:
                    return True
                session.execute(insert, {"key": key})
                tx.complete(b"paid")
            return False

        engine = create_engine(url)
        try:
            with Session(engine) as session:
                failure: BaseException | None = None
                try:
                    pay(session, "k-1")
                except StoreError as error:
                    failure = error
                ended = not session.in_transaction()
                session.execute(parent)
                session.commit()
                return failure, ended, pay(session, "k-1")
        finally:
            engine.dispose()

    failure, ended, retry_replayed = asyncio.run(run_async()) if mode == "async" else run_sync()
    assert failure is not None
    assert COMMIT_FAILED in str(failure)
    assert isinstance(failure.__cause__, DBAPIError)
    assert isinstance(failure.__cause__.orig, psycopg.errors.ForeignKeyViolation)
    assert ended
    assert retry_replayed is False  # the failed attempt left no record to replay
    assert _pg_rows(postgres_url, f"SELECT key, parent FROM {children}") == [("k-1", 7)]  # noqa: S608 - a unique_name() table
    assert _pg_rows(postgres_url, f"SELECT key FROM {records}") == [(b"k-1",)]  # noqa: S608 - a unique_name() table


# Django: `atomic` rolls a failed commit back; the error must be the store's. Django's settings
# are per process, so each test runs this module as a program (`_django_main`).


def _django_scenario(config: dict[str, Any]) -> dict[str, Any]:
    """Run in a Django process of its own: pay "k-1" while its commit fails, then check the
    connection and the retry; return what happened."""
    import django
    from django.conf import settings

    if config["db"] == "sqlite":
        database = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": config["path"],
            "OPTIONS": {"timeout": 0.1},  # bounds the commit's wait on the reader
        }
    else:
        parts = urlsplit(config["dsn"])
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parts.path.lstrip("/"),
            "USER": parts.username or "",
            "PASSWORD": parts.password or "",
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    settings.configure(DATABASES={"default": database}, INSTALLED_APPS=[], USE_TZ=True)
    django.setup()
    from django.db import connection

    from retrysafe.transactions import django as idempotent

    def pay(key: str, *, write: bool = True) -> bool:
        with idempotent.atomic(
            identity=_identity(key), fingerprint="f", table=config["table"]
        ) as tx:
            if tx.replay:
                return True
            if write:
                with connection.cursor() as cursor:
                    cursor.execute(config["insert"], (key,))
            tx.complete(b"paid")
        return False

    pay("warm-up", write=config["db"] == "sqlite")  # creates the records table
    failing = (
        _reading(Path(config["path"])) if config["db"] == "sqlite" else contextlib.nullcontext()
    )
    report: dict[str, Any] = {}
    with failing:
        try:
            pay("k-1")
        except Exception as error:  # reported, and checked by the test
            cause = error.__cause__
            report["error"] = [type(error).__name__, str(error), isinstance(error, StoreError)]
            report["cause"] = [type(cause).__module__, type(cause).__name__]
            report["driver"] = type(getattr(cause, "__cause__", None)).__name__
    report["in_atomic_block"] = connection.in_atomic_block
    if config["db"] != "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(config["parent"])
    report["retry_replayed"] = pay("k-1")
    return report


def _django_main() -> None:
    print("outcome:" + json.dumps(_django_scenario(json.loads(sys.argv[1]))))


def _django_run(config: dict[str, Any]) -> dict[str, Any]:
    """Run `_django_scenario` with `config` in a process of its own; return its report."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.transactions.test_commit_failures", json.dumps(config)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("outcome:")]
    report: dict[str, Any] = json.loads(line.removeprefix("outcome:"))
    return report


def test_b29_django_sqlite_commit_refused_raises_store_unavailable(journal_db: Path) -> None:
    """On Django's SQLite connection, a COMMIT refused with "database is locked" is rolled back
    by `atomic` and raised as `StoreUnavailableError`, Django's `OperationalError` chained (the
    sqlite3 error under it); the connection is out of the atomic block and usable, and a retry
    of the key runs again (before: Django's raw `OperationalError`)."""
    insert = "INSERT INTO payments (key, amount) VALUES (%s, 100)"
    table = "retrysafe_records"
    report = _django_run(
        {"db": "sqlite", "path": str(journal_db), "table": table, "insert": insert}
    )
    name, message, is_store_error = report["error"]
    assert (name, is_store_error) == ("StoreUnavailableError", True)
    assert COMMIT_FAILED in message
    assert "database is locked" in message
    assert report["cause"] == ["django.db.utils", "OperationalError"]
    assert report["driver"] == "OperationalError"
    assert report["in_atomic_block"] is False
    assert report["retry_replayed"] is False
    payments, keys = _committed(journal_db)
    assert payments == [("warm-up", 100), ("k-1", 100)]
    assert sorted(keys) == [b"k-1", b"warm-up"]


def test_b29_django_postgres_commit_that_fails_raises_store_error(
    postgres_url: str, pg_deferred: tuple[str, str, str]
) -> None:
    """On Django's PostgreSQL connection, a COMMIT refused by a deferred foreign key is rolled
    back and raised as `StoreError` saying so, Django's `IntegrityError` chained (psycopg's
    under it); nothing was applied, and a retry runs again."""
    records, parents, children = pg_deferred
    report = _django_run(
        {
            "db": "postgres",
            "dsn": postgres_url,
            "table": records,
            "insert": f"INSERT INTO {children} VALUES (%s, 7)",  # noqa: S608 - a unique_name() table
            "parent": f"INSERT INTO {parents} VALUES (7)",  # noqa: S608 - a unique_name() table
        }
    )
    name, message, is_store_error = report["error"]
    assert is_store_error, name
    assert COMMIT_FAILED in message
    assert report["cause"] == ["django.db.utils", "IntegrityError"]
    assert report["driver"] == "ForeignKeyViolation"
    assert report["in_atomic_block"] is False
    assert report["retry_replayed"] is False
    rows = _pg_rows(postgres_url, f"SELECT key, parent FROM {children} ORDER BY key")  # noqa: S608 - a unique_name() table
    assert rows == [("k-1", 7)]
    keys = _pg_rows(postgres_url, f"SELECT key FROM {records} ORDER BY key")  # noqa: S608 - a unique_name() table
    assert keys == [(b"k-1",), (b"warm-up",)]


if __name__ == "__main__":
    _django_main()
