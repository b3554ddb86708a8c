"""Versioned consumers in transactional mode when the database ends their connection (a
failover, an idle timeout, `pg_terminate_backend`), on a real PostgreSQL and SQLite.

On one connection given for the process's life, a connection that is closed raises
`ConnectionClosedError` on every delivery from then on, distinct from a transient error, so a
consume loop can stop (and be restarted) rather than requeue everything forever. Given a
`connect` callable instead (a pool's `pool.connection`, or a function that opens one), each
delivery gets a connection of its own, passed to the handler first, and the consumer recovers
by itself.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from retrysafe import ConfigurationError
from retrysafe.consumers import (
    ConnectionClosedError,
    VersionCounter,
    should_requeue,
    versioned_message,
)
from tests.conftest import drop_postgres_tables, unique_name

# ruff: noqa: S608 - every table is named by unique_name(), never by input


@pytest.fixture
def tables(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A versions table and a balances table of the test's own, dropped after."""
    versions, balances = unique_name("rs_versions"), unique_name("rs_balances")
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE TABLE "{balances}" (account TEXT PRIMARY KEY, cents BIGINT)')
    try:
        yield versions, balances
    finally:
        drop_postgres_tables(postgres_url, versions, balances)


def terminate(url: str, application: str) -> int:
    """End every server process of connections named `application`; return how many."""
    with psycopg.connect(url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application,),
        ).fetchall()
    return len(ended)


def upsert(balances: str) -> str:
    """The handler's write."""
    return (
        f'INSERT INTO "{balances}" VALUES (%s, %s) '
        "ON CONFLICT (account) DO UPDATE SET cents = excluded.cents"
    )


def cents(url: str, balances: str) -> list[tuple[str, int]]:
    """What the handler committed."""
    with psycopg.connect(url) as check:
        return check.execute(f'SELECT account, cents FROM "{balances}"').fetchall()


def ledger(counter: VersionCounter, versions: str) -> dict[str, Any]:
    """`versioned_message`'s options for the balance events: an account's, in `seq` order."""
    return {
        "namespace": "ledger",
        "entity": lambda event: event["account"],
        "version": lambda event: event["seq"],
        "counter": counter,
        "table": versions,
    }


def one_connection(
    pool: type[ConnectionPool[Any]] | type[AsyncConnectionPool[Any]], application: str
) -> dict[str, Any]:
    """`pool`'s options: a single connection, named `application`, checked before it is lent
    (so one the server ended is replaced), opened by `with`."""
    return {
        "min_size": 1,
        "max_size": 1,
        "kwargs": {"application_name": application},
        "check": pool.check_connection,
        "open": False,
    }


def test_b29_a_connection_the_server_closed_is_a_distinct_error(
    postgres_url: str, tables: tuple[str, str]
) -> None:
    """After `pg_terminate_backend`, every delivery on the decorated connection raises
    `ConnectionClosedError` (the message requeued, for a consumer that can apply it)."""
    versions, balances = tables
    application = unique_name("rs_app")
    db = psycopg.connect(postgres_url, application_name=application)
    counter = VersionCounter()

    @versioned_message(db, **ledger(counter, versions))
    def on_balance(event: dict[str, Any]) -> None:
        db.execute(upsert(balances), (event["account"], event["cents"]))

    try:
        on_balance({"account": "a", "seq": 1, "cents": 100})
        assert terminate(postgres_url, application) == 1
        for seq in (2, 3):
            with pytest.raises(ConnectionClosedError, match="closed") as closed:
                on_balance({"account": "a", "seq": seq, "cents": 100 * seq})
            assert should_requeue(closed.value)
    finally:
        db.close()
    assert counter.applied == 1
    assert cents(postgres_url, balances) == [("a", 100)]


def test_b29_a_pool_connection_recovers_after_the_server_killed_it(
    postgres_url: str, tables: tuple[str, str]
) -> None:
    """Given `pool.connection`, each delivery writes with the connection it is passed; after
    the server ended the pool's connections, the next deliveries apply without a restart."""
    versions, balances = tables
    application = unique_name("rs_app")
    counter = VersionCounter()
    with ConnectionPool(postgres_url, **one_connection(ConnectionPool, application)) as pool:

        @versioned_message(connect=pool.connection, **ledger(counter, versions))
        def on_balance(db: psycopg.Connection[Any], event: dict[str, Any]) -> None:
            db.execute(upsert(balances), (event["account"], event["cents"]))

        on_balance({"account": "a", "seq": 1, "cents": 100})
        assert terminate(postgres_url, application) == 1
        on_balance({"account": "a", "seq": 3, "cents": 300})
        on_balance({"account": "a", "seq": 2, "cents": 200})  # late: skipped
    assert (counter.applied, counter.stale) == (2, 1)
    assert cents(postgres_url, balances) == [("a", 300)]


@pytest.mark.anyio
async def test_b29_an_async_pool_connection_recovers_too(
    postgres_url: str, tables: tuple[str, str]
) -> None:
    """The same with an `AsyncConnectionPool` and an async handler."""
    versions, balances = tables
    application = unique_name("rs_app")
    counter = VersionCounter()
    options = one_connection(AsyncConnectionPool, application)
    async with AsyncConnectionPool(postgres_url, **options) as pool:

        @versioned_message(connect=pool.connection, **ledger(counter, versions))
        async def on_balance(db: psycopg.AsyncConnection[Any], event: dict[str, Any]) -> None:
            await db.execute(upsert(balances), (event["account"], event["cents"]))

        await on_balance({"account": "a", "seq": 1, "cents": 100})
        assert terminate(postgres_url, application) == 1
        await on_balance({"account": "a", "seq": 2, "cents": 200})
        await on_balance({"account": "a", "seq": 2, "cents": 200})  # duplicate: skipped
    assert (counter.applied, counter.stale) == (2, 1)
    assert cents(postgres_url, balances) == [("a", 200)]


def test_b29_a_connect_function_opens_and_closes_a_connection_per_delivery(
    tmp_path: Path,
) -> None:
    """A function that opens a `sqlite3` connection: each delivery gets one, closed after."""
    opened: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        opened.append(sqlite3.connect(tmp_path / "app.db"))
        return opened[-1]

    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as setup, setup:
        setup.execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, level INTEGER)")

    @versioned_message(
        connect=connect,
        namespace="warehouse",
        entity=lambda event: event["sku"],
        version=lambda event: event["seq"],
    )
    def on_stock(db: sqlite3.Connection, event: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO stock VALUES (?, ?) "
            "ON CONFLICT (sku) DO UPDATE SET level = excluded.level",
            (event["sku"], event["level"]),
        )

    for seq, level in [(1, 5), (3, 2), (2, 4)]:
        on_stock({"sku": "s", "seq": seq, "level": level})
    assert len(opened) == 3
    for connection in opened:
        with pytest.raises(sqlite3.ProgrammingError):
            connection.execute("SELECT 1")  # closed after its delivery
    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as check, check:
        assert check.execute("SELECT level FROM stock").fetchall() == [(2,)]


def test_b29_what_connect_returns_is_checked(tmp_path: Path) -> None:
    """A pool given whole, no target, or a connect that returns no connection: each is a
    configuration error, which names what to give instead."""
    pool = ConnectionPool("postgresql://nobody@127.0.0.1:1/none", open=False)
    with pytest.raises(ConfigurationError, match=r"connect=pool\.connection"):
        versioned_message(pool, namespace="n", entity=str, version=int)
    with pytest.raises(ConfigurationError, match="or connect="):
        versioned_message(namespace="n", entity=str, version=int)

    @versioned_message(connect=object, namespace="n", entity=str, version=int)
    def handle(db: object, entity: str) -> None:
        pass

    with pytest.raises(ConfigurationError, match="not a connection"):
        handle("1")


@pytest.mark.anyio
async def test_b29_a_mysql_connection_is_refused_not_requeued_forever(mysql_url: str) -> None:
    """Transactional mode does not drive MySQL or MariaDB: a PyMySQL or aiomysql connection is
    refused at decoration (it used to fail every delivery with an error that requeued it), and
    so is one that `connect` returns; a MySQL store is the way there."""
    import aiomysql  # type: ignore[import-untyped]
    import pymysql

    parts = urlsplit(mysql_url)
    where = {"host": parts.hostname, "port": parts.port or 3306, "user": parts.username}
    sync = pymysql.connect(**where, database=parts.path.lstrip("/"))
    asynchronous = await aiomysql.connect(**where, db=parts.path.lstrip("/"))
    try:
        for connection in (sync, asynchronous):
            with pytest.raises(ConfigurationError, match="MariaDB: give it a store"):
                versioned_message(connection, namespace="n", entity=str, version=int)

        @versioned_message(connect=lambda: sync, namespace="n", entity=str, version=int)
        def handle(db: object, entity: str) -> None:
            pass

        with pytest.raises(ConfigurationError, match="not a connection versioned_message"):
            handle("1")
    finally:
        asynchronous.close()
