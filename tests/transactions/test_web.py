"""Transactional mode in web handlers: FastAPI (ASGI) and Flask (WSGI).

The handler's writes, the key's record and the response commit in one transaction, before the
response is sent. Apps run under the frameworks' own test clients, and under uvicorn for the
concurrent duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from retrysafe import Identity, State, transactions
from retrysafe._http import Scoper, Settings, decode_outcome
from retrysafe.transactions.fastapi import RequestTransaction, Transactional, install, transaction
from tests.servers import AsgiServer
from tests.transactions.conftest import Database, make_database

KEY = "pay-1"
HEADERS = {"Idempotency-Key": f'"{KEY}"', "Authorization": "Bearer tenant-a"}
FLAVORS = ["sqlite", "postgres-session", "postgres-scoped", "postgres-psycopg"]


def identity_of(key: str = KEY) -> Identity:
    """The record identity the middleware gives a request with `key` from tenant-a."""
    scope = default_scope_of("Bearer tenant-a")
    return Identity("http", scope, key)


SECRET = "transactions-test-scope-secret"


@pytest.fixture(autouse=True)
def scope_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every app here hashes scopes with one known secret, so tests can name identities."""
    monkeypatch.setenv("RETRYSAFE_SCOPE_SECRET", SECRET)


def default_scope_of(authorization: str) -> str:
    """The default scope of a request with this Authorization header (B8)."""
    from retrysafe._http import RequestView

    view = RequestView("POST", "/", b"", [(b"authorization", authorization.encode())], {})
    scope = Scoper(SECRET.encode()).scope_of(Settings(), view)
    assert scope is not None
    return scope


class PaymentIn(BaseModel):
    """A payment request; `fail` makes the handler raise or answer 500 after its write."""

    amount: int
    fail: str | None = None


@dataclass
class Site:
    """One test app on one database."""

    database: Database
    flavor: str
    app: Any

    def payments(self) -> list[tuple[Any, ...]]:
        """The committed payments."""
        return self.database.payment_rows()

    def record(self, key: str = KEY) -> Any:
        """The key's record as the store sees it."""
        store = self.database.store()
        try:
            return store.get(identity_of(key))
        finally:
            store.close()


async def _insert(connection: Any, database: Database, amount: int) -> str:
    """Insert one payment with the request's connection, whatever kind it is."""
    payment = {"id": secrets.token_hex(6), "key": KEY, "amount": amount}
    if isinstance(connection, sqlite3.Connection):
        await anyio.to_thread.run_sync(
            lambda: transactions.insert_if_absent(
                connection, database.payments, payment, unique=["id"]
            )
        )
    else:
        await transactions.ainsert_if_absent(connection, database.payments, payment, unique=["id"])
    return str(payment["id"])


def fastapi_app(database: Database, flavor: str) -> Any:
    """A FastAPI app whose payment handlers write in transactional mode."""
    app = FastAPI()
    install(app, connect=_connect(database, flavor), table=database.table)

    @app.post("/payments", status_code=201)
    async def create_payment(body: PaymentIn, tx: Transactional) -> Any:
        payment_id = await _insert(tx.connection, database, body.amount)
        if body.fail == "raise":
            raise RuntimeError("the handler failed after its write")
        if body.fail == "500":
            return JSONResponse({"error": "upstream"}, status_code=500)
        if body.fail == "409":  # FastAPI answers for it: the handler still raised
            raise HTTPException(status_code=409, detail="insufficient funds")
        return {"id": payment_id, "amount": body.amount, "key": tx.key}

    @app.post("/strict", status_code=201)
    async def strict(
        body: PaymentIn,
        tx: Annotated[RequestTransaction[Any], Depends(transaction(required=True))],
    ) -> Any:
        return {"id": await _insert(tx.connection, database, body.amount)}

    @app.post("/untouched")
    async def untouched() -> Any:
        return {"covered": False}

    return app


def _connect(database: Database, flavor: str) -> Callable[[], Any]:
    if flavor == "sqlite":
        return lambda: sqlite3.connect(database.dsn, timeout=30, check_same_thread=False)
    if flavor == "postgres-psycopg":
        import psycopg

        return lambda: psycopg.AsyncConnection.connect(database.dsn)
    from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker, create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(database.sqlalchemy_url(), poolclass=NullPool)
    if flavor == "postgres-scoped":  # one session per request task, given as the proxy
        scoped = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)
        return lambda: scoped
    return async_sessionmaker(engine)


@pytest.fixture(params=FLAVORS)
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """The FastAPI app on SQLite (a sync connection), and on PostgreSQL through an
    AsyncSession, an async_scoped_session and a psycopg AsyncConnection."""
    flavor = str(request.param)
    with make_database(flavor.split("-", maxsplit=1)[0], request, tmp_path) as database:
        yield Site(database, flavor, fastapi_app(database, flavor))


@contextlib.contextmanager
def serving(app: Any) -> Iterator[httpx.Client]:
    """Serve `app` with uvicorn on a loopback port; yield a client of it."""
    server = AsgiServer(app)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        server.stop()


@pytest.fixture
def client(site: Site) -> Iterator[httpx.Client]:
    """A client of the site, served by uvicorn."""
    with serving(site.app) as http:
        yield http


def test_b29_the_response_commits_with_the_writes_and_replays(
    site: Site, client: httpx.Client
) -> None:
    """The first request writes once and stores its response in the same commit; a repeat
    gets that response byte for byte, marked as a replay."""
    first = client.post("/payments", json={"amount": 100}, headers=HEADERS)
    assert first.status_code == 201
    assert first.json()["key"] == KEY
    assert "idempotent-replayed" not in first.headers
    again = client.post("/payments", json={"amount": 100}, headers=HEADERS)
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert [row[0] for row in site.payments()] == [first.json()["id"]]
    record = site.record()
    assert record.state is State.DONE
    stored = decode_outcome(record.outcome)
    assert stored.status == 201
    assert stored.body == first.content


def test_b13_another_request_with_the_key_is_refused(site: Site, client: httpx.Client) -> None:
    """The same key with another body gets the 422 problem and writes nothing."""
    client.post("/payments", json={"amount": 100}, headers=HEADERS)
    other = client.post("/payments", json={"amount": 999}, headers=HEADERS)
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert len(site.payments()) == 1


@pytest.mark.parametrize("fail", ["raise", "500"])
def test_b18_a_failed_handler_rolls_back_its_writes_and_the_key(
    site: Site, client: httpx.Client, fail: str
) -> None:
    """An exception or a 5xx rolls back the writes and the claim; the retry runs cleanly."""
    # uvicorn closes the connection after an exception; do not let the retry race that.
    closing = {**HEADERS, "Connection": "close"}
    failed = client.post("/payments", json={"amount": 100, "fail": fail}, headers=closing)
    assert failed.status_code == 500
    assert site.payments() == []
    assert site.record() is None
    retry = client.post("/payments", json={"amount": 100}, headers=HEADERS)
    assert retry.status_code == 201
    assert [row[0] for row in site.payments()] == [retry.json()["id"]]


def test_b18_an_http_exception_rolls_back_its_writes_as_any_raise_does(
    site: Site, client: httpx.Client
) -> None:
    """A handler that writes and then raises `HTTPException` (an "insufficient funds" 409)
    gets its 409 sent, but its writes and the claim roll back, as for any handler that raises
    (and a raising Flask view, `abort` included): they used to commit, the 409 stored."""
    failed = client.post("/payments", json={"amount": 100, "fail": "409"}, headers=HEADERS)
    assert failed.status_code == 409
    assert failed.json() == {"detail": "insufficient funds"}
    assert site.payments() == []
    assert site.record() is None
    again = client.post("/payments", json={"amount": 100, "fail": "409"}, headers=HEADERS)
    assert again.status_code == 409
    assert "idempotent-replayed" not in again.headers
    assert site.payments() == []


def test_b6_requests_without_a_key(site: Site, client: httpx.Client) -> None:
    """Without a key the handler still commits its writes (untracked); a required key is
    refused before anything runs; routes without a transaction are left alone."""
    for _ in range(2):
        assert client.post("/payments", json={"amount": 5}).status_code == 201
    assert len(site.payments()) == 2
    refused = client.post("/strict", json={"amount": 5})
    assert refused.status_code == 400
    assert refused.json()["type"].endswith("key-required")
    assert len(site.payments()) == 2
    assert client.post("/untouched", headers=HEADERS).json() == {"covered": False}
    assert site.record() is None


def test_b14_concurrent_duplicates_over_http_make_one_payment(site: Site) -> None:
    """Twenty concurrent requests with one key on a real server: one payment, one response."""
    server = AsgiServer(site.app)
    barrier = threading.Barrier(20)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            barrier.wait(10)
            return http.post("/payments", json={"amount": 100}, headers=HEADERS)

    try:
        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(post, range(20)))
    finally:
        server.stop()
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert len(site.payments()) == 1


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_b29_a_failed_commit_answers_503_and_keeps_nothing(database: Database) -> None:
    """A write that fails only at the commit (a deferred constraint) rolls back the claim
    too; the client gets 503, never a success for writes that did not happen."""
    database.execute(
        f"ALTER TABLE {database.payments} ADD CONSTRAINT {database.payments}_key "
        "UNIQUE (key) DEFERRABLE INITIALLY DEFERRED"
    )
    app = FastAPI()
    install(app, connect=_connect(database, "postgres-psycopg"), table=database.table)

    @app.post("/payments", status_code=201)
    async def create(tx: Transactional) -> Any:
        for _ in range(2):  # the second violates the deferred constraint at commit time
            await _insert(tx.connection, database, 1)
        return {"ok": True}

    with serving(app) as http:
        response = http.post("/payments", headers=HEADERS)
    assert response.status_code == 503
    assert database.payment_rows() == []
    store = database.store()
    try:
        assert store.get(identity_of()) is None
    finally:
        store.close()


def test_transactional_routes_coexist_with_the_http_middleware(tmp_path: Path) -> None:
    """With both installed on one database, the HTTP middleware leaves transactional routes
    alone (no second claim), tracks its own routes, and sees the transactional records."""
    from retrysafe import open_async_store
    from retrysafe.integrations.fastapi import install as install_http

    path = tmp_path / "app.db"
    sqlite3.connect(path).execute(
        "CREATE TABLE payments (id TEXT PRIMARY KEY, key TEXT, amount INTEGER)"
    ).connection.close()
    app = FastAPI()
    calls = {"tracked": 0}

    @app.post("/payments", status_code=201)
    def create(tx: Transactional) -> Any:
        tx.connection.execute("INSERT INTO payments VALUES (?, ?, 1)", (secrets.token_hex(6), KEY))
        return {"ok": True}

    @app.post("/other")
    def other() -> Any:
        calls["tracked"] += 1
        return {"calls": calls["tracked"]}

    install(app, connect=lambda: sqlite3.connect(path, timeout=30, check_same_thread=False))
    install_http(app, store=open_async_store(f"sqlite:///{path}"))
    with serving(app) as http:
        other_key = {**HEADERS, "Idempotency-Key": '"other-1"'}
        for _ in range(2):
            assert http.post("/payments", headers=HEADERS).status_code == 201
            assert http.post("/other", headers=other_key).json() == {"calls": 1}
        # One table: the middleware sees the transactional record, made for another request.
        assert http.post("/other", headers=HEADERS).status_code == 422
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM payments").fetchone() == (1,)


# Flask


def flask_app(database: Database, *, scoped: bool = False) -> Any:
    """A Flask app whose payment view writes in transactional mode; with `scoped`, through a
    `scoped_session`, as Flask-SQLAlchemy's `db.session` is, removed when the request ends."""
    import flask

    from retrysafe.transactions.flask import install, transactional

    app = flask.Flask(__name__)
    connect: Callable[[], Any]
    if scoped:
        from sqlalchemy import create_engine
        from sqlalchemy.orm import scoped_session, sessionmaker
        from sqlalchemy.pool import NullPool

        # NullPool: a connection closes with its session, none is left for the GC to find
        engine = create_engine(database.sqlalchemy_url(), poolclass=NullPool)
        session = scoped_session(sessionmaker(engine))
        app.teardown_appcontext(lambda _: session.remove())
        connect = lambda: session  # noqa: E731 - what `connect=lambda: db.session` gives
    elif database.kind == "sqlite":
        connect = functools.partial(sqlite3.connect, database.dsn, timeout=30)
    else:
        import psycopg

        connect = functools.partial(psycopg.connect, database.dsn)
    install(app, connect=connect, table=database.table)

    @app.post("/payments")
    @transactional(required=True)
    def create_payment(tx: Any) -> Any:
        body = flask.request.get_json()
        payment = {"id": secrets.token_hex(6), "key": KEY, "amount": body["amount"]}
        transactions.insert_if_absent(tx.connection, database.payments, payment, unique=["id"])
        if body.get("fail"):
            raise RuntimeError("the view failed after its write")
        return {"id": payment["id"], "key": tx.key}, 201

    return app


@pytest.mark.parametrize("scoped", [False, True], ids=["driver", "scoped-session"])
def test_b29_flask_view_commits_with_its_key(database: Database, scoped: bool) -> None:
    """A Flask view in transactional mode: one payment, replays, mismatch, rollback on error,
    and a required key; on a driver connection or on a `scoped_session` (Flask-SQLAlchemy's
    `db.session`), which `connect` may give as it is."""
    client = flask_app(database, scoped=scoped).test_client()
    failed = client.post("/payments", json={"amount": 1, "fail": True}, headers=HEADERS)
    assert failed.status_code == 500
    assert database.payment_rows() == []
    first = client.post("/payments", json={"amount": 1}, headers=HEADERS)
    assert first.status_code == 201
    again = client.post("/payments", json={"amount": 1}, headers=HEADERS)
    assert again.status_code == 201
    assert again.data == first.data
    assert again.headers["Idempotent-Replayed"] == "true"
    assert json.loads(first.data)["key"] == KEY
    assert client.post("/payments", json={"amount": 2}, headers=HEADERS).status_code == 422
    assert client.post("/payments", json={"amount": 1}).status_code == 400
    assert [row[0] for row in database.payment_rows()] == [json.loads(first.data)["id"]]
