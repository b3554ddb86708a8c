"""A web handler that caught a database error and answered anyway (B18, B24, B29).

On PostgreSQL the caught error aborted the request's transaction: nothing of the handler was
applied, and its response (a 409 "already registered", say) claims an outcome that cannot be
stored. The request is answered with a 500 problem that names the cause, logged at ERROR with
the handler's name, its key released; not with the handler's response, and not with a 503 that
would send the client retrying into the same failure. On SQLite a caught error leaves the
transaction usable, and the handler's 409 is stored and replayed as any outcome.
"""

from __future__ import annotations

import functools
import logging
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from retrysafe._http import PROBLEMS
from retrysafe.transactions.fastapi import Transactional, install
from tests.transactions.conftest import Database, make_database
from tests.transactions.test_web import HEADERS, KEY, SECRET, identity_of, serving

TAKEN = "taken"
PROBLEM_TYPE = "https://retrysafe.readthedocs.io/en/latest/transactions/#transaction-aborted"


@pytest.fixture(autouse=True)
def scope_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The apps hash scopes with test_web's known secret, so the tests can name identities."""
    monkeypatch.setenv("RETRYSAFE_SCOPE_SECRET", SECRET)


class Signup(BaseModel):
    """A signup: its email must not be registered yet."""

    email: str


def _database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with make_database(kind, request, tmp_path) as database:
        database.execute(
            f"INSERT INTO {database.payments} VALUES (?, ?, ?)",  # noqa: S608 - a unique_name() table
            (TAKEN, "registered before", 0),
        )
        yield database


@pytest.fixture
def postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A real PostgreSQL server with this test's tables, one row taken already."""
    yield from _database("postgres", request, tmp_path)


@pytest.fixture
def sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A SQLite file with this test's tables, one row taken already."""
    yield from _database("sqlite", request, tmp_path)


def _duplicate_errors() -> tuple[type[Exception], ...]:
    import psycopg
    from sqlalchemy.exc import IntegrityError

    return (sqlite3.IntegrityError, psycopg.errors.UniqueViolation, IntegrityError)


async def _write(connection: Any, database: Database, row: tuple[object, ...]) -> None:
    """Insert a row into the payments table with the request's connection, whatever it is."""
    if isinstance(connection, sqlite3.Connection):
        statement = f"INSERT INTO {database.payments} VALUES (?, ?, ?)"  # noqa: S608
        await anyio.to_thread.run_sync(connection.execute, statement, row)
        return
    if hasattr(connection, "sync_session"):  # an AsyncSession
        from sqlalchemy import text

        statement = f"INSERT INTO {database.payments} VALUES (:id, :key, :amount)"  # noqa: S608
        await connection.execute(
            text(statement), dict(zip(("id", "key", "amount"), row, strict=True))
        )
        return
    statement = f"INSERT INTO {database.payments} VALUES (%s, %s, %s)"  # noqa: S608
    await connection.execute(statement, row)


def signup_app(database: Database, connect: Callable[[], Any]) -> FastAPI:
    """A FastAPI app whose signup writes a row, then answers 409 if the email is taken."""
    app = FastAPI()
    install(app, connect=connect, table=database.table)
    duplicate = _duplicate_errors()

    @app.post("/signups", status_code=201)
    async def create_signup(body: Signup, tx: Transactional) -> Any:
        await _write(tx.connection, database, (secrets.token_hex(6), KEY, 1))
        try:
            await _write(tx.connection, database, (body.email, KEY, 2))
        except duplicate:
            return JSONResponse({"detail": "email already registered"}, status_code=409)
        return {"email": body.email}

    return app


def _postgres_connect(database: Database, kind: str) -> Callable[[], Any]:
    if kind == "psycopg":
        import psycopg

        return lambda: psycopg.AsyncConnection.connect(database.dsn)
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.pool import NullPool

    return async_sessionmaker(create_async_engine(database.sqlalchemy_url(), poolclass=NullPool))


def _record(database: Database) -> Any:
    store = database.store()
    try:
        return store.get(identity_of(KEY))
    finally:
        store.close()


def _assert_aborted_problem(response: httpx.Response) -> None:
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert "retry-after" not in response.headers  # not an outage: not to be retried as one
    problem = response.json()
    assert problem["type"] == PROBLEM_TYPE
    assert problem["title"] == "Transaction aborted"
    assert (problem["status"], problem["title"]) == PROBLEMS["transaction-aborted"]  # as listed
    assert "email" not in response.text  # nothing of the handler's answer


def _errors_naming(caplog: pytest.LogCaptureFixture, handler: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.levelno == logging.ERROR and handler in record.getMessage()
    ]


@pytest.mark.parametrize("kind", ["psycopg", "sqlalchemy"])
def test_b29_a_handler_that_caught_a_database_error_gets_a_500_not_its_409(
    postgres: Database, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On PostgreSQL (a psycopg AsyncConnection, an AsyncSession) the handler's 409 is replaced
    by the 500 problem, with or without a key, every time: nothing is committed, the key is
    released (no 503 with Retry-After, no record), and each is logged at ERROR naming it."""
    app = signup_app(postgres, _postgres_connect(postgres, kind))
    unkeyed = {"Authorization": HEADERS["Authorization"]}
    with serving(app) as client, caplog.at_level(logging.ERROR, logger="retrysafe"):
        for headers in (HEADERS, HEADERS, unkeyed):
            _assert_aborted_problem(client.post("/signups", json={"email": TAKEN}, headers=headers))
        assert postgres.payment_rows(KEY) == []
        assert _record(postgres) is None
        fresh = client.post("/signups", json={"email": "new@example.com"}, headers=HEADERS)
    assert len(_errors_naming(caplog, "create_signup")) == 3
    assert fresh.status_code == 201  # the key was free: the new email runs and commits
    assert [row[1:] for row in postgres.payment_rows(KEY)] == [(KEY, 1), (KEY, 2)]


def test_b29_on_sqlite_the_handlers_409_is_stored_and_replayed(sqlite: Database) -> None:
    """SQLite fails only the statement: the handler's 409 commits with its first write, and a
    retry gets it replayed."""
    connect = functools.partial(sqlite3.connect, sqlite.dsn, timeout=30, check_same_thread=False)
    with serving(signup_app(sqlite, connect)) as client:
        first = client.post("/signups", json={"email": TAKEN}, headers=HEADERS)
        again = client.post("/signups", json={"email": TAKEN}, headers=HEADERS)
    assert (first.status_code, again.status_code) == (409, 409)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert len(sqlite.payment_rows(KEY)) == 1
    assert _record(sqlite) is not None


def flask_signup_app(database: Database) -> Any:
    """The signup as a Flask view on a sync psycopg connection."""
    import flask
    import psycopg

    from retrysafe.transactions.flask import install as install_flask
    from retrysafe.transactions.flask import transactional

    app = flask.Flask(__name__)
    install_flask(
        app, connect=functools.partial(psycopg.connect, database.dsn), table=database.table
    )
    statement = f"INSERT INTO {database.payments} VALUES (%s, %s, %s)"  # noqa: S608

    @app.post("/signups")
    @transactional()
    def register(tx: Any) -> Any:
        tx.connection.execute(statement, (secrets.token_hex(6), KEY, 1))
        try:
            tx.connection.execute(statement, (flask.request.get_json()["email"], KEY, 2))
        except psycopg.errors.UniqueViolation:
            return {"detail": "email already registered"}, 409
        return {"ok": True}, 201

    return app


def test_b29_a_flask_view_that_caught_a_database_error_gets_a_500(
    postgres: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The Flask view on PostgreSQL: the same 500 problem instead of its 409, logged naming the
    view, nothing committed and the key released."""
    client = flask_signup_app(postgres).test_client()
    with caplog.at_level(logging.ERROR, logger="retrysafe"):
        answers = [client.post("/signups", json={"email": TAKEN}, headers=HEADERS)]
        answers.append(client.post("/signups", json={"email": TAKEN}))
    for answer in answers:
        _assert_aborted_problem(
            httpx.Response(answer.status_code, headers=list(answer.headers), content=answer.data)
        )
    assert len(_errors_naming(caplog, "register")) == 2
    assert postgres.payment_rows(KEY) == []
    assert _record(postgres) is None
