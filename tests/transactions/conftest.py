"""Databases and driver faces for the transactional-mode tests.

`database` is a fresh SQLite file or a real PostgreSQL server, with a records table and a
`payments` table of its own (`unique_name()`), dropped afterwards. `face` runs one payment in
transactional mode through one driver: `sqlite3` or `sqlalchemy` on SQLite; `psycopg`,
`psycopg-async`, `sqlalchemy` and `sqlalchemy-async` on PostgreSQL.

MySQL (a real MariaDB or MySQL server, InnoDB) is a `Database` too, with its faces `pymysql`,
`aiomysql-async`, `sqlalchemy` and `sqlalchemy-async` (`MYSQL_FACES`), through fixtures of
their own (`mysql_database`, `mysql_face`): tests/transactions/test_mysql*.py run the other
modules' tests that fit every database on them, and MySQL's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from retrysafe import Identity, ManualClock, Store, open_store, transactions
from tests.conftest import drop_mysql_tables, unique_name

DATABASES = ["sqlite", "postgres"]
FACES = {
    "sqlite": ["sqlite3", "sqlalchemy"],
    "postgres": ["psycopg", "psycopg-async", "sqlalchemy", "sqlalchemy-async"],
}
MYSQL_FACES = ["pymysql", "aiomysql-async", "sqlalchemy", "sqlalchemy-async"]


def stored(key: str) -> str:
    """Return `key` as the payments table holds it (PostgreSQL text cannot hold NUL)."""
    return key.replace("\x00", "\\0")


class BoomError(Exception):
    """Raised inside a transaction by a test."""


@dataclass
class Database:
    """One test's database: where it is, its records table and its payments table."""

    kind: str
    dsn: str
    table: str
    payments: str
    extra_tables: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The store URL that shares the records table."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.dsn}?table={self.table}"
        return f"{self.dsn}?table={self.table}"

    @property
    def mark(self) -> str:
        """The driver's placeholder."""
        return "?" if self.kind == "sqlite" else "%s"

    def quote(self, name: str) -> str:
        """Return a column name quoted for this database (MySQL reserves `key`)."""
        return f"`{name}`" if self.kind == "mysql" else name

    def connect(self, **options: Any) -> Any:
        """Open a plain driver connection (sqlite3 in its default mode, psycopg, PyMySQL)."""
        if self.kind == "sqlite":
            return sqlite3.connect(self.dsn, timeout=30)
        if self.kind == "mysql":
            import pymysql

            return pymysql.connect(**self.mysql_options(), **options)
        import psycopg

        return psycopg.connect(self.dsn)

    async def aconnect(self, **options: Any) -> Any:
        """Open a psycopg AsyncConnection, or on MySQL an aiomysql one."""
        if self.kind == "mysql":
            import aiomysql

            settings = self.mysql_options()
            settings["db"] = settings.pop("database")
            return await aiomysql.connect(**settings, **options)
        import psycopg

        return await psycopg.AsyncConnection.connect(self.dsn)

    def mysql_options(self) -> dict[str, Any]:
        """The PyMySQL connection arguments of a `mysql://` DSN."""
        parts = urlsplit(self.dsn)
        return {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": parts.username or "root",
            "password": parts.password or "",
            "database": parts.path.lstrip("/"),
            "charset": "utf8mb4",
        }

    def sqlalchemy_url(self, *, asynchronous: bool = False) -> str:
        """The SQLAlchemy URL of this database."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.dsn}"
        if self.kind == "mysql":
            driver = "aiomysql" if asynchronous else "pymysql"
            return self.dsn.replace("mysql://", f"mysql+{driver}://", 1) + "?charset=utf8mb4"
        return self.dsn.replace("postgresql://", "postgresql+psycopg://", 1)

    def execute(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in its own committed transaction; return its rows."""
        conn = self.connect()
        try:
            cursor = conn.cursor()
            mysql_args = params or None  # PyMySQL formats the statement only with arguments
            cursor.execute(
                statement.replace("?", self.mark), mysql_args if self.kind == "mysql" else params
            )
            rows = [tuple(row) for row in cursor.fetchall()] if cursor.description else []
            conn.commit()
            return rows
        finally:
            conn.close()

    def payment_rows(self, key: str | None = None) -> list[tuple[Any, ...]]:
        """Return the committed payments (id, key, amount), for one key or all."""
        column = self.quote("key")
        where, params = (f"WHERE {column} = ?", (stored(key),)) if key is not None else ("", ())
        return self.execute(f"SELECT id, {column}, amount FROM {self.payments} {where}", params)  # noqa: S608 - a unique_name() table

    def create_table(self, prefix: str, columns: str) -> str:
        """Create a table of this test's own (dropped afterwards); return its name.

        `columns` is in the SQL SQLite and PostgreSQL share; on MySQL, `TEXT` becomes
        `VARCHAR(255)` (MySQL indexes no TEXT without a prefix length) and a `key` column is
        quoted, in an InnoDB table of utf8mb4 text compared byte for byte.
        """
        name = unique_name(prefix)
        if self.kind == "mysql":
            columns = re.sub(r"\bkey\b", "`key`", re.sub(r"\bTEXT\b", "VARCHAR(255)", columns))
            self.execute(f"CREATE TABLE {name} ({columns}) {MYSQL_TABLE}")
        else:
            self.execute(f"CREATE TABLE {name} ({columns})")
        self.extra_tables.append(name)
        return name

    def store(self, clock: ManualClock | None = None) -> Store:
        """Open the store on the same records table."""
        return open_store(self.url, clock=clock)


MYSQL_TABLE = "ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
"""How the tests' own MySQL tables are made: transactional, any text, byte-exact keys."""


def _create(database: Database) -> None:
    if database.kind == "sqlite":
        conn = sqlite3.connect(database.dsn)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.close()
    if database.kind == "mysql":
        database.execute(
            f"CREATE TABLE {database.payments} (id VARCHAR(64) PRIMARY KEY, "
            f"`key` VARCHAR(255) NOT NULL, amount INTEGER) {MYSQL_TABLE}"
        )
        return
    database.execute(
        f"CREATE TABLE {database.payments} (id TEXT PRIMARY KEY, key TEXT NOT NULL, amount INTEGER)"
    )


def _drop(database: Database) -> None:
    if database.kind == "mysql":
        drop_mysql_tables(database.dsn, database.table, database.payments, *database.extra_tables)
    if database.kind == "postgres":
        import psycopg

        with psycopg.connect(database.dsn, autocommit=True) as conn:
            for table in (database.table, database.payments, *database.extra_tables):
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')  # a unique_name() of this test


@contextlib.contextmanager
def make_database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """Create a database of `kind` for one test and drop what it created afterwards."""
    if kind == "sqlite":
        dsn = str(tmp_path / "app.db")
    elif kind == "mysql":
        dsn = str(request.getfixturevalue("mysql_url"))
    else:
        dsn = str(request.getfixturevalue("postgres_url"))
    database = Database(kind, dsn, unique_name("rs_tx"), unique_name("rs_pay"))
    _create(database)
    try:
        yield database
    finally:
        _drop(database)


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh SQLite file, or a real PostgreSQL server with tables of this test's own."""
    with make_database(str(request.param), request, tmp_path) as made:
        yield made


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says."""
    return ManualClock()


@dataclass(frozen=True)
class Paid:
    """What one payment attempt returned."""

    replay: bool
    outcome: bytes | None
    taken_over: bool = False

    @property
    def payment_id(self) -> str:
        """The payment id in the outcome."""
        assert self.outcome is not None
        return str(json.loads(self.outcome)["id"])


@dataclass(frozen=True)
class _Plan:
    key: str
    amount: int
    fail: bool
    forget: bool
    write_on_replay: bool
    hold: float

    def row(self, payment_id: str) -> dict[str, object]:
        return {"id": payment_id, "key": stored(self.key), "amount": self.amount}


@dataclass
class Face:
    """Runs one payment in transactional mode through one driver.

    Args:
        name: the driver face.
        database: where.
        clock: the time source shared with the test's store.
    """

    name: str
    database: Database
    clock: ManualClock

    def identity(self, key: str) -> Identity:
        """The identity of a payment key."""
        return Identity("payments", "tenant-a", key)

    def pay(
        self,
        key: str,
        amount: int = 100,
        *,
        fingerprint: str | None = None,
        fail: bool = False,
        forget: bool = False,
        write_on_replay: bool = False,
        hold: float = 0.0,
    ) -> Paid:
        """Insert one payment for `key` and store `{"id": ...}` as the outcome, or replay.

        Args:
            key: the idempotency key.
            amount: the payment's amount.
            fingerprint: the request's fingerprint (default: derived from the amount).
            fail: raise `Boom` after the write.
            forget: leave the block without `complete`.
            write_on_replay: write a payment even on a replay (a buggy handler).
            hold: seconds to keep the transaction open after the write, so that
                duplicates arrive while it runs.
        """
        options = {
            "identity": self.identity(key),
            "fingerprint": fingerprint or f"amount={amount}",
            "table": self.database.table,
            "clock": self.clock,
        }
        plan = _Plan(key, amount, fail, forget, write_on_replay, hold)
        if self.name.endswith("-async"):
            return asyncio.run(self._apay(options, plan))
        return self._pay(options, plan)

    def _pay(
        self,
        options: dict[str, Any],
        plan: _Plan,
    ) -> Paid:
        if self.name == "sqlalchemy":
            return self._pay_session(options, plan)
        conn = self.database.connect()
        opener = {"sqlite3": transactions.sqlite, "pymysql": transactions.mysql}.get(
            self.name, transactions.psycopg
        )
        insert = f"INSERT INTO {self.database.payments} VALUES (?, ?, ?)".replace(  # noqa: S608 - a unique_name() table
            "?", self.database.mark
        )
        try:
            with opener(conn, **options) as tx:
                if tx.replay and not plan.write_on_replay:
                    return Paid(True, tx.outcome)
                payment_id = secrets.token_hex(6)
                conn.cursor().execute(insert, (payment_id, stored(plan.key), plan.amount))
                if plan.fail:
                    raise BoomError
                time.sleep(plan.hold)
                if tx.replay:
                    return Paid(True, tx.outcome)
                if not plan.forget:
                    tx.complete(json.dumps({"id": payment_id}).encode())
            return Paid(False, tx.outcome, tx.taken_over)
        finally:
            conn.close()

    def _pay_session(
        self,
        options: dict[str, Any],
        plan: _Plan,
    ) -> Paid:
        from sqlalchemy import create_engine, text
        from sqlalchemy.orm import Session

        engine = create_engine(self.database.sqlalchemy_url(), poolclass=_null_pool())
        insert = text(f"INSERT INTO {self.database.payments} VALUES (:id, :key, :amount)")  # noqa: S608 - a unique_name() table
        try:
            with Session(engine) as session, transactions.sqlalchemy(session, **options) as tx:
                if tx.replay and not plan.write_on_replay:
                    return Paid(True, tx.outcome)
                payment_id = secrets.token_hex(6)
                session.execute(insert, plan.row(payment_id))
                if plan.fail:
                    raise BoomError
                time.sleep(plan.hold)
                if tx.replay:
                    return Paid(True, tx.outcome)
                if not plan.forget:
                    tx.complete(json.dumps({"id": payment_id}).encode())
            return Paid(False, tx.outcome, tx.taken_over)
        finally:
            engine.dispose()

    async def _apay(
        self,
        options: dict[str, Any],
        plan: _Plan,
    ) -> Paid:
        if self.name == "sqlalchemy-async":
            return await self._apay_session(options, plan)
        conn = await self.database.aconnect()
        insert = f"INSERT INTO {self.database.payments} VALUES (%s, %s, %s)"  # noqa: S608 - a unique_name() table
        opener = transactions.mysql if self.name == "aiomysql-async" else transactions.psycopg
        try:
            async with opener(conn, **options) as tx:
                if tx.replay and not plan.write_on_replay:
                    return Paid(True, tx.outcome)
                payment_id = secrets.token_hex(6)
                async with conn.cursor() as cursor:
                    await cursor.execute(insert, (payment_id, stored(plan.key), plan.amount))
                if plan.fail:
                    raise BoomError
                await asyncio.sleep(plan.hold)
                if tx.replay:
                    return Paid(True, tx.outcome)
                if not plan.forget:
                    tx.complete(json.dumps({"id": payment_id}).encode())
            return Paid(False, tx.outcome, tx.taken_over)
        finally:
            await _aclose(conn)

    async def _apay_session(
        self,
        options: dict[str, Any],
        plan: _Plan,
    ) -> Paid:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        engine = create_async_engine(
            self.database.sqlalchemy_url(asynchronous=True), poolclass=_null_pool()
        )
        insert = text(f"INSERT INTO {self.database.payments} VALUES (:id, :key, :amount)")  # noqa: S608 - a unique_name() table
        try:
            async with AsyncSession(engine) as session:
                async with transactions.sqlalchemy(session, **options) as tx:
                    if tx.replay and not plan.write_on_replay:
                        return Paid(True, tx.outcome)
                    payment_id = secrets.token_hex(6)
                    await session.execute(insert, plan.row(payment_id))
                    if plan.fail:
                        raise BoomError
                    await asyncio.sleep(plan.hold)
                    if tx.replay:
                        return Paid(True, tx.outcome)
                    if not plan.forget:
                        tx.complete(json.dumps({"id": payment_id}).encode())
                return Paid(False, tx.outcome, tx.taken_over)
        finally:
            await engine.dispose()


async def _aclose(conn: Any) -> None:
    """Close an async connection: psycopg's `close()` is a coroutine, aiomysql's
    `ensure_closed()` (its `close()` drops the socket without a goodbye)."""
    closing = getattr(conn, "ensure_closed", None) or conn.close
    await closing()


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


FACE_PARAMS = [f"{kind}/{name}" for kind, names in FACES.items() for name in names]


@pytest.fixture(params=FACE_PARAMS)
def face(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Iterator[Face]:
    """Each driver face on its database: a fresh SQLite file or a real PostgreSQL server."""
    kind, name = str(request.param).split("/")
    with make_database(kind, request, tmp_path) as database:
        yield Face(name, database, clock)


@pytest.fixture
def mysql_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A real MySQL or MariaDB server, with tables of this test's own."""
    with make_database("mysql", request, tmp_path) as made:
        yield made


@pytest.fixture(params=[f"mysql/{name}" for name in MYSQL_FACES])
def mysql_face(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> Iterator[Face]:
    """Each MySQL driver face: PyMySQL, aiomysql, and SQLAlchemy sessions on both."""
    with make_database("mysql", request, tmp_path) as database:
        yield Face(str(request.param).split("/")[1], database, clock)
