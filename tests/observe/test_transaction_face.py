"""The transactional face reports to observers (`retrysafe.observe`) what each keyed request
did, on the FastAPI middleware and the Flask decorator, against SQLite and PostgreSQL."""

from __future__ import annotations

import functools
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flask
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from retrysafe import transactions
from retrysafe.observe import Observer, Operation
from retrysafe.observe.prometheus import PrometheusObserver
from retrysafe.transactions.fastapi import Transactional, install
from tests.transactions.conftest import Database, make_database

CALLER = {"Authorization": "Bearer observed-tenant"}


class Recorder(Observer):
    """Keeps every ended operation."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def ended(self, operation: Operation) -> None:
        """Keep it."""
        self.operations.append(operation)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh database with a records table and a payments table."""
    with make_database(str(request.param), request, tmp_path) as made:
        yield made


def connect(database: Database, *, threads: bool) -> Callable[[], Any]:
    """Return the database's `connect()`: sqlite3 or psycopg (sync)."""
    if database.kind == "sqlite":
        return functools.partial(
            sqlite3.connect, database.dsn, timeout=30, check_same_thread=not threads
        )
    import psycopg

    return functools.partial(psycopg.connect, database.dsn)


def insert(connection: Any, database: Database) -> None:
    """Write one payment with the request's connection."""
    row = {"id": secrets.token_hex(6), "key": "k", "amount": 1}
    transactions.insert_if_absent(connection, database.payments, row, unique=["id"])


def counts(registry: CollectorRegistry, metric: str, label: str) -> dict[str, float]:
    """Return a counter's samples for the transaction face, by the value of `label`."""
    found: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == metric and sample.labels.get("face") == "transaction":
                found[sample.labels[label]] = sample.value
    return found


def key(value: str) -> dict[str, str]:
    """Return the headers of a keyed request."""
    return {**CALLER, "Idempotency-Key": f'"{value}"'}


def test_b29_fastapi_transactions_are_observed(database: Database) -> None:
    """Executions, a replay, a mismatch, an invalid key, a 500 rolled back: each counted."""
    registry = CollectorRegistry()
    recorder = Recorder()
    app = FastAPI()
    install(
        app,
        connect=connect(database, threads=True),
        table=database.table,
        observers=[PrometheusObserver(registry), recorder],
    )

    @app.post("/payments", status_code=201)
    async def pay(body: dict[str, Any], tx: Transactional) -> Any:
        import anyio.to_thread

        await anyio.to_thread.run_sync(insert, tx.connection, database)
        if body.get("fail"):
            return JSONResponse({"error": "failed"}, status_code=500)
        return {"ok": True}

    transport = httpx.ASGITransport(app=app)

    async def run() -> list[int]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            statuses = []
            for body, headers in [
                ({"n": 1}, key("a")),
                ({"n": 1}, key("a")),  # replay
                ({"n": 2}, key("a")),  # mismatch
                ({"fail": True}, key("b")),  # 500: rolled back, released
                ({"n": 1}, {**CALLER, "Idempotency-Key": "not a structured string"}),
            ]:
                response = await client.post("/payments", json=body, headers=headers)
                statuses.append(response.status_code)
            return statuses

    import anyio

    assert anyio.run(run) == [201, 201, 422, 500, 400]
    decisions = counts(registry, "retrysafe_requests_total", "decision")
    assert decisions == {"execute": 2, "replay": 1, "mismatch": 1, "invalid": 1}
    assert counts(registry, "retrysafe_outcome_total", "result") == {"stored": 1, "released": 1}
    executed = [op for op in recorder.operations if op.decision == "execute"]
    assert {op.key for op in executed} == {"a", "b"}
    assert all(op.namespace == "http" and op.seconds is not None for op in executed)


def test_b29_flask_transactions_are_observed(database: Database) -> None:
    """The Flask decorator reports the same way."""
    from retrysafe.transactions.flask import install as flask_install
    from retrysafe.transactions.flask import transactional

    registry = CollectorRegistry()
    app = flask.Flask(__name__)
    flask_install(
        app,
        connect=connect(database, threads=False),
        table=database.table,
        observers=[PrometheusObserver(registry)],
    )

    @app.post("/payments")
    @transactional(required=True)
    def pay(tx: Any) -> Any:
        insert(tx.connection, database)
        if (flask.request.get_json() or {}).get("fail"):
            raise RuntimeError("the view failed after its write")
        return {"ok": True}, 201

    client = app.test_client()
    assert client.post("/payments", json={}, headers=key("c")).status_code == 201
    assert client.post("/payments", json={}, headers=key("c")).status_code == 201
    assert client.post("/payments", json={"fail": True}, headers=key("d")).status_code == 500
    assert client.post("/payments", json={}, headers=CALLER).status_code == 400  # no key
    decisions = counts(registry, "retrysafe_requests_total", "decision")
    assert decisions == {"execute": 2, "replay": 1, "rejected": 1}
    assert counts(registry, "retrysafe_outcome_total", "result") == {"stored": 1, "released": 1}
