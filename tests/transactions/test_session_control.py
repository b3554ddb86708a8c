"""A SQLAlchemy session may not end a transactional block's transaction from inside it (B29).

A repository helper that calls `session.commit()` is common in SQLAlchemy code. Inside a
block, that commit would commit the claim in flight with the writes made so far: a crash
before the block ends would leave them done and the key free to be taken over once its lease
ends, and the retry would write them again. These tests run each case on a real SQLite file,
PostgreSQL and MariaDB, through `Session` and `AsyncSession` (and their scoped proxies); and
on psycopg, which refuses such a commit itself.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrysafe import Identity, transactions
from tests.transactions.conftest import Database, make_database

SESSIONS = ["sqlite", "postgres", "postgres-async", "mysql", "mysql-async"]
COMMITTED_INSIDE = "The session was committed inside a transactional block"
ENDED_INSIDE = "rolled back or closed inside a transactional block"


@pytest.fixture(params=SESSIONS)
def session_kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Database, bool]]:
    """A database of this test's own, and whether its session is an `AsyncSession`."""
    kind, _, face = str(request.param).partition("-")
    with make_database(kind, request, tmp_path) as database:
        _kept(database, "")  # makes the records table: MySQL cannot inside a transaction
        yield database, face == "async"


def _block(
    database: Database, asynchronous: bool, key: str, steps: list[str], *, outer: bool = False
) -> BaseException | None:
    """Run a transactional block for `key` on a fresh session that takes `steps` ("insert",
    "commit", "rollback", "savepoint": an insert in a savepoint of its own), then completes;
    with `outer`, inside a transaction the session opened before and commits after. Return
    what the block raised, or None."""
    if asynchronous:
        return asyncio.run(_ablock(database, key, steps, outer=outer))
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(database.sqlalchemy_url())
    try:
        with Session(engine) as session:
            if outer:
                _insert(session, database, key, "outer")
            try:
                with transactions.sqlalchemy(session, **_options(database, key)) as tx:
                    for step in steps:
                        if step == "savepoint":
                            with session.begin_nested():
                                _insert(session, database, key, step)
                        elif step in {"commit", "rollback"}:
                            getattr(session, step)()
                        else:
                            _insert(session, database, key, step)
                    tx.complete(b"done")
            except Exception as error:
                return error
            if outer:
                session.commit()
        return None
    finally:
        engine.dispose()


async def _ablock(
    database: Database, key: str, steps: list[str], *, outer: bool
) -> BaseException | None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(database.sqlalchemy_url(asynchronous=True))
    try:
        async with AsyncSession(engine) as session:
            if outer:
                await session.execute(*_insert_args(database, key, "outer"))
            try:
                async with transactions.sqlalchemy(session, **_options(database, key)) as tx:
                    for step in steps:
                        if step == "savepoint":
                            async with session.begin_nested():
                                await session.execute(*_insert_args(database, key, step))
                        elif step in {"commit", "rollback"}:
                            await getattr(session, step)()
                        else:
                            await session.execute(*_insert_args(database, key, step))
                    tx.complete(b"done")
            except Exception as error:
                return error
            if outer:
                await session.commit()
        return None
    finally:
        await engine.dispose()


def _identity(key: str) -> Identity:
    return Identity("payments", "tenant-a", key)


def _options(database: Database, key: str) -> dict[str, Any]:
    return {
        "identity": _identity(key),
        "fingerprint": "amount=100",
        "table": database.table,
    }


def _insert_args(database: Database, key: str, step: str) -> tuple[Any, dict[str, object]]:
    from sqlalchemy import text

    statement = text(f"INSERT INTO {database.payments} VALUES (:id, :key, :amount)")  # noqa: S608 - a unique_name() table
    return statement, {"id": f"{step}-{secrets.token_hex(4)}", "key": key, "amount": 100}


def _insert(session: Any, database: Database, key: str, step: str) -> None:
    session.execute(*_insert_args(database, key, step))


def _kept(database: Database, key: str) -> tuple[list[str], str | None]:
    """Return the committed payments of `key` (the step that wrote each) and its record's
    state (None: no record)."""
    steps = sorted(str(row[0]).rsplit("-", 1)[0] for row in database.payment_rows(key))
    store = database.store()
    try:
        record = store.get(_identity(key))
    finally:
        store.close()
    return steps, None if record is None else record.state.value


def test_b29_a_commit_inside_the_block_is_refused_and_nothing_is_kept(
    session_kind: tuple[Database, bool],
) -> None:
    """`session.commit()` inside the block raises before anything is committed: the block
    rolls back, no payment and no record are kept, and the retry runs once. Before, the commit
    kept the payment and the claim in flight, for a retry to take over once its lease ended."""
    database, asynchronous = session_kind
    raised = _block(database, asynchronous, "k", ["insert", "commit", "insert"])
    assert isinstance(raised, RuntimeError), raised
    assert COMMITTED_INSIDE in str(raised)
    assert _kept(database, "k") == ([], None)
    assert _block(database, asynchronous, "k", ["insert"]) is None
    assert _kept(database, "k") == (["insert"], "done")


def test_b29_a_rollback_inside_the_block_fails_it_and_keeps_nothing(
    session_kind: tuple[Database, bool],
) -> None:
    """`session.rollback()` inside the block undoes the claim with the writes: the block then
    raises a clear error, and what it wrote after the rollback is not kept either (before, it
    raised `FencedError`, as if a lease had been taken over)."""
    database, asynchronous = session_kind
    raised = _block(database, asynchronous, "k", ["insert", "rollback", "insert"])
    assert isinstance(raised, RuntimeError), raised
    assert ENDED_INSIDE in str(raised)
    assert _kept(database, "k") == ([], None)


@pytest.mark.parametrize("outer", [False, True], ids=["own", "in-a-transaction"])
def test_b29_a_savepoint_of_the_blocks_own_commits_with_it(
    session_kind: tuple[Database, bool], outer: bool
) -> None:
    """A savepoint the block opens and commits (`session.begin_nested()`) is no commit of the
    block's transaction: its write commits with the key. Inside a transaction the session
    opened before, the block is a savepoint and the session commits everything after it."""
    database, asynchronous = session_kind
    assert _block(database, asynchronous, "k", ["insert", "savepoint"], outer=outer) is None
    expected = ["insert", "outer", "savepoint"] if outer else ["insert", "savepoint"]
    assert _kept(database, "k") == (expected, "done")


def test_b29_a_commit_of_the_enclosing_transaction_inside_the_block_is_refused(
    session_kind: tuple[Database, bool],
) -> None:
    """Inside a transaction the session opened before, a commit in the block would commit
    that transaction and the block's savepoint with it: refused the same way, and the
    session's own earlier write is not committed by it."""
    database, asynchronous = session_kind
    raised = _block(database, asynchronous, "k", ["insert", "commit"], outer=True)
    assert isinstance(raised, RuntimeError), raised
    assert COMMITTED_INSIDE in str(raised)
    assert _kept(database, "k") == ([], None)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("step", ["commit", "rollback"])
def test_b29_a_psycopg_connection_refuses_to_end_the_block_inside_it(
    postgres_url: str, tmp_path: Path, request: pytest.FixtureRequest, asynchronous: bool, step: str
) -> None:
    """On a psycopg connection the block is psycopg's own `connection.transaction()`, inside
    which psycopg refuses an explicit `commit()` or `rollback()`: nothing is kept, and the
    retry runs once."""
    import psycopg

    with make_database("postgres", request, tmp_path) as database:
        insert = f"INSERT INTO {database.payments} VALUES (%s, %s, %s)"  # noqa: S608 - a unique_name() table

        def pay(steps: list[str]) -> BaseException | None:
            with psycopg.connect(database.dsn) as conn:
                try:
                    with transactions.psycopg(conn, **_options(database, "k")) as tx:
                        for name in steps:
                            if name in {"commit", "rollback"}:
                                getattr(conn, name)()
                            else:
                                conn.execute(insert, (f"{name}-{secrets.token_hex(4)}", "k", 100))
                        tx.complete(b"done")
                except Exception as error:
                    return error
            return None

        async def apay(steps: list[str]) -> BaseException | None:
            async with await psycopg.AsyncConnection.connect(database.dsn) as conn:
                try:
                    async with transactions.psycopg(conn, **_options(database, "k")) as tx:
                        for name in steps:
                            if name in {"commit", "rollback"}:
                                await getattr(conn, name)()
                            else:
                                await conn.execute(
                                    insert, (f"{name}-{secrets.token_hex(4)}", "k", 100)
                                )
                        tx.complete(b"done")
                except Exception as error:
                    return error
            return None

        def run(steps: list[str]) -> BaseException | None:
            return asyncio.run(apay(steps)) if asynchronous else pay(steps)

        raised = run(["insert", step, "insert"])
        assert isinstance(raised, psycopg.ProgrammingError), raised
        assert f"Explicit {step}() forbidden within a Transaction context" in str(raised)
        assert _kept(database, "k") == ([], None)
        assert run(["insert"]) is None
        assert _kept(database, "k") == (["insert"], "done")


def test_b29_a_scoped_session_stands_for_its_current_session(
    session_kind: tuple[Database, bool],
) -> None:
    """A `scoped_session` (Flask-SQLAlchemy's `db.session`) or an `async_scoped_session` is
    taken for the session it stands for: the write commits with the key, the repeat replays,
    and a commit through the scoped proxy inside the block is refused as any other."""
    database, asynchronous = session_kind
    if asynchronous:
        replayed, refused = asyncio.run(_ascoped(database))
    else:
        from sqlalchemy import create_engine
        from sqlalchemy.orm import scoped_session, sessionmaker

        engine = create_engine(database.sqlalchemy_url())
        scoped = scoped_session(sessionmaker(engine))
        try:
            for _ in range(2):
                with transactions.sqlalchemy(scoped, **_options(database, "k")) as tx:
                    replayed = tx.replay
                    if not replayed:
                        scoped.execute(*_insert_args(database, "k", "insert"))
                        tx.complete(b"done")
            try:
                with transactions.sqlalchemy(scoped, **_options(database, "other")):
                    scoped.execute(*_insert_args(database, "other", "insert"))
                    scoped.commit()
            except RuntimeError as error:
                refused: BaseException | None = error
            else:
                refused = None
        finally:
            scoped.remove()
            engine.dispose()
    assert replayed
    assert COMMITTED_INSIDE in str(refused)
    assert _kept(database, "k") == (["insert"], "done")
    assert _kept(database, "other") == ([], None)


async def _ascoped(database: Database) -> tuple[bool, BaseException | None]:
    from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker, create_async_engine

    engine = create_async_engine(database.sqlalchemy_url(asynchronous=True))
    scoped = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)
    try:
        for _ in range(2):
            async with transactions.sqlalchemy(scoped, **_options(database, "k")) as tx:
                replayed = tx.replay
                if not replayed:
                    await scoped.execute(*_insert_args(database, "k", "insert"))
                    tx.complete(b"done")
        try:
            async with transactions.sqlalchemy(scoped, **_options(database, "other")):
                await scoped.execute(*_insert_args(database, "other", "insert"))
                await scoped.commit()
        except RuntimeError as error:
            return replayed, error
        return replayed, None
    finally:
        await scoped.remove()
        await engine.dispose()
