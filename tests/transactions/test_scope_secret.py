"""The scope secret kept in the records table (B8), in transactional mode's web faces: a secret
created in a transaction that rolls back is never kept, so every process scopes a caller alike.

Two apps on one database stand for two workers (each keeps the secret it loaded); the
Flask app's session is a `scoped_session` that a `before_request` hook already used (loading
the user), so it has a transaction open when the secret is first needed. Django's case
(`ATOMIC_REQUESTS`) is in test_django_orm.py, in processes of its own. And the scope itself:
FastAPI's transactional face scopes by the user the app's own dependency names.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import OAuth2PasswordBearer

from retrysafe import transactions
from retrysafe.transactions.fastapi import Transactional, install
from tests.servers import AsgiServer
from tests.transactions.conftest import Database, make_database

pytestmark = pytest.mark.usefixtures("no_configured_secret")

HEADERS = {"Authorization": "Bearer tenant-a", "Idempotency-Key": "order-1"}


@pytest.fixture
def no_configured_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret comes from the records table, as when none is configured."""
    monkeypatch.delenv("RETRYSAFE_SCOPE_SECRET", raising=False)


@pytest.fixture
def postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """PostgreSQL: a savepoint there commits only with its enclosing transaction. (SQLite's
    driver opens no transaction for the hook's read, so its savepoint commits by itself.)"""
    with make_database("postgres", request, tmp_path) as made:
        yield made


def flask_worker(database: Database) -> Any:
    """A Flask app (one worker) on a `scoped_session`, with a hook that reads through it."""
    import flask
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import scoped_session, sessionmaker
    from sqlalchemy.pool import NullPool

    from retrysafe.transactions.flask import install, transactional

    engine = create_engine(database.sqlalchemy_url(), poolclass=NullPool)
    session = scoped_session(sessionmaker(engine))
    app = flask.Flask(__name__)
    app.teardown_appcontext(lambda _: session.remove())
    install(app, connect=lambda: session, table=database.table)

    @app.before_request
    def load_user() -> None:
        session.execute(text("SELECT 1"))  # the session's transaction is open from here on

    @app.post("/payments")
    @transactional(required=True)
    def create_payment(tx: Any) -> Any:
        payment = {"id": secrets.token_hex(6), "key": "order-1", "amount": 5}
        transactions.insert_if_absent(tx.connection, database.payments, payment, unique=["id"])
        return {"id": payment["id"]}, 201

    return app


def test_b8_flask_secret_made_in_a_session_a_hook_opened_is_committed(
    postgres: Database,
) -> None:
    """The first worker's payment, retried on a second worker, is replayed: the secret the
    first created is committed (before: it rolled back with the hook's session, and the
    second worker made another one, scoped the retry apart and paid again)."""
    postgres.store().close()  # the records table exists, with no scope secret in it yet
    first = flask_worker(postgres).test_client()
    paid = first.post("/payments", json={}, headers=HEADERS)
    retried = flask_worker(postgres).test_client().post("/payments", json={}, headers=HEADERS)
    assert paid.status_code == retried.status_code == 201
    assert retried.headers.get("Idempotent-Replayed") == "true"
    assert json.loads(retried.data) == json.loads(paid.data)
    assert len(postgres.payment_rows()) == 1
    again = first.post("/payments", json={}, headers=HEADERS)  # the first worker kept it
    assert again.headers.get("Idempotent-Replayed") == "true"


# FastAPI: the principal named by the app's own dependency (B8)

TOKENS = {"t1": "alice", "t2": "alice"}  # t2: alice's token after a refresh
OAUTH2 = OAuth2PasswordBearer(tokenUrl="token")


def current_user(token: Annotated[str, Depends(OAUTH2)]) -> str:
    """The app's authentication: the user of a known bearer token, else 401."""
    if token not in TOKENS:
        raise HTTPException(401, "unknown token")
    return TOKENS[token]


def test_b8_fastapi_transactional_scope_is_the_users_across_a_token_refresh(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """With `install(principal=current_user)`, alice's retry with her refreshed token is a
    replay of the payment her first token made: one payment row (before: another caller)."""
    with make_database("sqlite", request, tmp_path) as database:
        app = FastAPI()
        install(
            app,
            connect=lambda: sqlite3.connect(database.dsn, timeout=30, check_same_thread=False),
            table=database.table,
            principal=current_user,
        )

        @app.post("/payments", status_code=201)
        async def create_payment(tx: Transactional) -> Any:
            payment = {"id": secrets.token_hex(6), "key": "order-1", "amount": 5}
            await anyio.to_thread.run_sync(
                lambda: transactions.insert_if_absent(
                    tx.connection, database.payments, payment, unique=["id"]
                )
            )
            return {"id": payment["id"]}

        server = AsgiServer(app)
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                key = {"Idempotency-Key": "order-1"}
                first = http.post("/payments", headers={**key, "Authorization": "Bearer t1"})
                retry = http.post("/payments", headers={**key, "Authorization": "Bearer t2"})
        finally:
            server.stop()
        assert first.status_code == retry.status_code == 201
        assert retry.headers.get("Idempotent-Replayed") == "true"
        assert retry.json() == first.json()
        assert len(database.payment_rows()) == 1
