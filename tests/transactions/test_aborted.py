"""A transaction aborted under transactional mode: code that caught a database error and went on.

PostgreSQL aborts a transaction when one of its statements fails, refuses every later statement,
and answers its COMMIT by rolling it back, without an error. SQLAlchemy does the same to a
session's transaction after a flush fails, on every database. Code that caught the error and
went on therefore has nothing applied: a block raises `TransactionAbortedError` (B29), a phase
too (B30), and a versioned consumer's delivery is neither applied nor acknowledged; on SQLite
and MySQL a caught statement error leaves the transaction usable, and it commits as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from retrysafe import Identity, State, transactions
from retrysafe.consumers import VersionCounter, should_requeue, versioned_message
from retrysafe.transactions import Step, TransactionAbortedError
from tests.transactions.conftest import Database, make_database

TAKEN = "taken"
"""The id of the payment that exists before each test: inserting it again fails."""


def _identity(key: str) -> Identity:
    return Identity("orders", "tenant-a", key)


def _prepared(database: Database) -> Database:
    database.execute(
        f"INSERT INTO {database.payments} VALUES (?, ?, ?)",  # noqa: S608 - a unique_name() table
        (TAKEN, "before", 0),
    )
    return database


@pytest.fixture
def postgres(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """A real PostgreSQL server with this test's tables, one payment in them already."""
    with make_database("postgres", request, tmp_path) as database:
        yield _prepared(database)


def _insert(database: Database, style: str = "qmark") -> str:
    """The payments INSERT in the driver's parameter style (`qmark`, `format`, `named`)."""
    marks = {"qmark": "?, ?, ?", "format": "%s, %s, %s", "named": ":id, :key, :amount"}[style]
    return f"INSERT INTO {database.payments} VALUES ({marks})"  # noqa: S608 - a unique_name() table


def _ours(key: str) -> dict[str, object]:
    return {"id": secrets.token_hex(6), "key": key, "amount": 100}


# One payment per face: the payment, then the audit-like write that fails on the taken id,
# caught; with `savepoint`, that write runs in a savepoint, as it should.


def _psycopg(database: Database, key: str, savepoint: bool) -> bytes | None:
    import psycopg

    with contextlib.closing(psycopg.connect(database.dsn)) as conn:
        options = {"identity": _identity(key), "fingerprint": "fp", "table": database.table}
        with transactions.psycopg(conn, **options) as tx:
            conn.execute(_insert(database, "format"), tuple(_ours(key).values()))
            savepoint_or_not = conn.transaction() if savepoint else contextlib.nullcontext()
            with contextlib.suppress(psycopg.errors.UniqueViolation), savepoint_or_not:
                conn.execute(_insert(database, "format"), (TAKEN, key, 1))
            tx.complete(b"paid")
        return tx.outcome


def _psycopg_async(database: Database, key: str, savepoint: bool) -> bytes | None:
    import psycopg

    async def pay() -> bytes | None:
        conn = await psycopg.AsyncConnection.connect(database.dsn)
        options = {"identity": _identity(key), "fingerprint": "fp", "table": database.table}
        try:
            async with transactions.psycopg(conn, **options) as tx:
                await conn.execute(_insert(database, "format"), tuple(_ours(key).values()))
                with contextlib.suppress(psycopg.errors.UniqueViolation):
                    async with conn.transaction() if savepoint else contextlib.nullcontext():
                        await conn.execute(_insert(database, "format"), (TAKEN, key, 1))
                tx.complete(b"paid")
            return tx.outcome
        finally:
            await conn.close()

    return asyncio.run(pay())


def _sqlalchemy(database: Database, key: str, savepoint: bool) -> bytes | None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import NullPool

    engine = create_engine(database.sqlalchemy_url(), poolclass=NullPool)
    options = {"identity": _identity(key), "fingerprint": "fp", "table": database.table}
    try:
        with Session(engine) as session, transactions.sqlalchemy(session, **options) as tx:
            session.execute(text(_insert(database, "named")), _ours(key))
            nested = session.begin_nested() if savepoint else contextlib.nullcontext()
            with contextlib.suppress(IntegrityError), nested:
                session.execute(
                    text(_insert(database, "named")), {"id": TAKEN, "key": key, "amount": 1}
                )
            tx.complete(b"paid")
        return tx.outcome
    finally:
        engine.dispose()


def _sqlalchemy_async(database: Database, key: str, savepoint: bool) -> bytes | None:
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.pool import NullPool

    async def pay() -> bytes | None:
        engine = create_async_engine(database.sqlalchemy_url(), poolclass=NullPool)
        options = {"identity": _identity(key), "fingerprint": "fp", "table": database.table}
        try:
            async with AsyncSession(engine) as session:
                async with transactions.sqlalchemy(session, **options) as tx:
                    await session.execute(text(_insert(database, "named")), _ours(key))
                    with contextlib.suppress(IntegrityError):
                        nested = session.begin_nested() if savepoint else contextlib.nullcontext()
                        async with nested:
                            await session.execute(
                                text(_insert(database, "named")),
                                {"id": TAKEN, "key": key, "amount": 1},
                            )
                    tx.complete(b"paid")
                return tx.outcome
        finally:
            await engine.dispose()

    return asyncio.run(pay())


def _orm_flush(database: Database, key: str, savepoint: bool) -> bytes | None:
    """The failing write is an ORM object's flush, which SQLAlchemy answers by rolling the
    session's whole transaction back (the claim with it), whatever the database."""
    from sqlalchemy import Integer, String, create_engine
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import DeclarativeBase, Session, mapped_column
    from sqlalchemy.pool import NullPool

    class Base(DeclarativeBase):
        pass

    class Payment(Base):
        __tablename__ = database.payments
        id = mapped_column(String, primary_key=True)
        key = mapped_column(String)
        amount = mapped_column(Integer)

    engine = create_engine(database.sqlalchemy_url(), poolclass=NullPool)
    options = {"identity": _identity(key), "fingerprint": "fp", "table": database.table}
    try:
        with Session(engine) as session, transactions.sqlalchemy(session, **options) as tx:
            session.add(Payment(**_ours(key)))
            session.flush()
            nested = session.begin_nested() if savepoint else contextlib.nullcontext()
            with contextlib.suppress(IntegrityError), nested:
                session.add(Payment(id=TAKEN, key=key, amount=1))
                session.flush()
            tx.complete(b"paid")
        return tx.outcome
    finally:
        engine.dispose()


ABORTING: dict[str, Callable[[Database, str, bool], bytes | None]] = {
    "psycopg": _psycopg,
    "psycopg-async": _psycopg_async,
    "sqlalchemy": _sqlalchemy,
    "sqlalchemy-async": _sqlalchemy_async,
    "sqlalchemy-flush": _orm_flush,
}


def _record(database: Database, key: str) -> Any:
    store = database.store()
    try:
        return store.get(_identity(key))
    finally:
        store.close()


@pytest.mark.parametrize("face", list(ABORTING))
def test_b29_a_block_that_caught_a_database_error_raises_and_keeps_nothing(
    postgres: Database, face: str
) -> None:
    """A block whose caught statement error aborted its PostgreSQL transaction raises
    `TransactionAbortedError` (not a store error), keeps neither its writes nor the key, and the
    same block with that statement in a savepoint then commits its payment and outcome."""
    pay = ABORTING[face]
    with pytest.raises(TransactionAbortedError, match="savepoint"):
        pay(postgres, "k-1", False)
    assert postgres.payment_rows("k-1") == []
    assert _record(postgres, "k-1") is None  # the key is free: a retry runs again
    assert pay(postgres, "k-1", True) == b"paid"
    assert len(postgres.payment_rows("k-1")) == 1
    assert _record(postgres, "k-1").state is State.DONE


def test_b29_a_block_inside_the_callers_transaction_leaves_it_usable(postgres: Database) -> None:
    """Inside the caller's transaction the aborted block rolls back to its savepoint only: the
    caller's transaction is usable again, and commits what it wrote before the block."""
    import psycopg

    with contextlib.closing(psycopg.connect(postgres.dsn)) as conn:
        conn.execute(_insert(postgres, "format"), tuple(_ours("outer").values()))
        options = {"identity": _identity("k-2"), "fingerprint": "fp", "table": postgres.table}
        block = transactions.psycopg(conn, **options)
        with pytest.raises(TransactionAbortedError), block as tx:  # noqa: PT012 - the block
            conn.execute(_insert(postgres, "format"), tuple(_ours("k-2").values()))
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                conn.execute(_insert(postgres, "format"), (TAKEN, "k-2", 1))
            tx.complete(b"paid")
        conn.commit()
    assert len(postgres.payment_rows("outer")) == 1
    assert postgres.payment_rows("k-2") == []
    assert _record(postgres, "k-2") is None


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
def test_b29_a_caught_statement_error_leaves_sqlite_and_mysql_transactions_usable(
    request: pytest.FixtureRequest, tmp_path: Any, kind: str
) -> None:
    """SQLite and MySQL fail only the statement: the block that caught its error commits its
    payment and outcome as before."""
    with make_database(kind, request, tmp_path) as database:
        _prepared(database)
        conn = database.connect()
        opener = transactions.sqlite if kind == "sqlite" else transactions.mysql
        options = {"identity": _identity("k-3"), "fingerprint": "fp", "table": database.table}
        insert = _insert(database, "qmark" if kind == "sqlite" else "format")
        try:
            with opener(conn, **options) as tx:
                conn.cursor().execute(insert, tuple(_ours("k-3").values()))
                try:
                    conn.cursor().execute(insert, (TAKEN, "k-3", 1))
                except Exception as error:  # the driver's IntegrityError
                    assert "integrity" in type(error).__name__.lower()  # noqa: PT017
                tx.complete(b"paid")
        finally:
            conn.close()
        assert tx.outcome == b"paid"
        assert len(database.payment_rows("k-3")) == 1
        assert _record(database, "k-3").state is State.DONE


def test_b29_a_failed_flush_on_sqlite_raises_transaction_aborted(
    request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    """On SQLite too a failed ORM flush takes the session's transaction down (SQLAlchemy rolls it
    back): the block raises `TransactionAbortedError`, not that its claim was taken over."""
    with make_database("sqlite", request, tmp_path) as database:
        _prepared(database)
        with pytest.raises(TransactionAbortedError):
            _orm_flush(database, "k-4", False)
        assert database.payment_rows("k-4") == []
        assert _record(database, "k-4") is None
        assert _orm_flush(database, "k-4", True) == b"paid"


def test_b30_a_phase_that_caught_a_database_error_is_not_recorded(postgres: Database) -> None:
    """A phase that returns from an aborted transaction raises `TransactionAbortedError` and is
    not recorded as done; the retry runs it again and finishes."""
    import psycopg

    runs: list[bool] = []

    def charge(step: Step) -> bytes:
        conn.execute(_insert(postgres, "format"), tuple(_ours("k-5").values()))
        savepoint_or_not = conn.transaction() if runs else contextlib.nullcontext()
        with contextlib.suppress(psycopg.errors.UniqueViolation), savepoint_or_not:
            conn.execute(_insert(postgres, "format"), (TAKEN, "k-5", 1))
        runs.append(True)
        return b"charged"

    options = {"identity": _identity("k-5"), "fingerprint": "fp", "table": postgres.table}
    with contextlib.closing(psycopg.connect(postgres.dsn, autocommit=True)) as conn:
        with pytest.raises(TransactionAbortedError):
            transactions.run_phases(conn, {"charge": charge}, **options)
        assert postgres.payment_rows("k-5") == []
        result = transactions.run_phases(conn, {"charge": charge}, **options)
    assert (result.outcome, result.ran) == (b"charged", ("charge",))
    assert len(postgres.payment_rows("k-5")) == 1


# Versioned consumers in transactional mode.


def _versions(database: Database) -> list[tuple[Any, ...]]:
    return database.execute(f"SELECT entity, version FROM {database.table}_v")  # noqa: S608


def _consumer(database: Database, conn: Any, counter: VersionCounter, savepoint: bool) -> Any:
    import psycopg

    @versioned_message(
        conn,
        namespace="stock",
        entity=lambda event: event["sku"],
        version=lambda event: event["seq"],
        counter=counter,
        table=f"{database.table}_v",
    )
    def on_stock(event: dict[str, Any]) -> None:
        conn.execute(_insert(database, "format"), (secrets.token_hex(6), event["sku"], 5))
        savepoint_or_not = conn.transaction() if savepoint else contextlib.nullcontext()
        # a best-effort audit row: a duplicate is fine
        with contextlib.suppress(psycopg.errors.UniqueViolation), savepoint_or_not:
            conn.execute(_insert(database, "format"), (TAKEN, event["sku"], 1))

    return on_stock


def test_b29_a_versioned_handler_that_caught_a_database_error_is_not_applied(
    postgres: Database,
) -> None:
    """A versioned consumer's handler that caught a database error on PostgreSQL has its
    delivery raise `TransactionAbortedError`, which `should_requeue` rejects rather than
    acknowledge: nothing of it committed, its version included, and it is not counted applied.
    A handler that puts that write in a savepoint applies the same message."""
    import psycopg

    postgres.extra_tables.append(f"{postgres.table}_v")
    counter = VersionCounter()
    with contextlib.closing(psycopg.connect(postgres.dsn)) as conn:
        with pytest.raises(TransactionAbortedError) as raised:
            _consumer(postgres, conn, counter, False)({"sku": "s-1", "seq": 1})
        assert should_requeue(raised.value) is False
        assert counter.applied == 0
        assert postgres.payment_rows("s-1") == []
        assert _versions(postgres) == []
        _consumer(postgres, conn, counter, True)({"sku": "s-1", "seq": 1})
    assert counter.applied == 1
    assert len(postgres.payment_rows("s-1")) == 1
    assert _versions(postgres) == [("s-1", 1)]


def test_b29_an_async_versioned_handler_that_caught_a_database_error_is_not_applied(
    postgres: Database,
) -> None:
    """The same on a psycopg `AsyncConnection`: the delivery raises, nothing is applied."""
    import psycopg

    postgres.extra_tables.append(f"{postgres.table}_v")
    counter = VersionCounter()

    async def deliver() -> None:
        conn = await psycopg.AsyncConnection.connect(postgres.dsn)

        @versioned_message(
            conn,
            namespace="stock",
            entity=lambda event: event["sku"],
            version=lambda event: event["seq"],
            counter=counter,
            table=f"{postgres.table}_v",
        )
        async def on_stock(event: dict[str, Any]) -> None:
            await conn.execute(_insert(postgres, "format"), (secrets.token_hex(6), "s-2", 5))
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                await conn.execute(_insert(postgres, "format"), (TAKEN, "s-2", 1))

        try:
            await on_stock({"sku": "s-2", "seq": 1})
        finally:
            await conn.close()

    with pytest.raises(TransactionAbortedError):
        asyncio.run(deliver())
    assert counter.applied == 0
    assert postgres.payment_rows("s-2") == []
    assert _versions(postgres) == []
