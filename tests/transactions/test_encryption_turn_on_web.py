"""Encryption at rest turned on for a records table in use, on the transactional web faces (B8).

The scope secret of a table used before encryption was on is in clear (`retrysafe.internal`,
`scope-secret`, 32 bytes). Each face given a keyring (FastAPI, ASGI, Flask, Django; on a real
SQLite file and PostgreSQL server) reads it as it is, as the HTTP middleware and the proxy do
(`retrysafe._flow.secret.open_secret`): callers keep their scopes, and keyed requests run once
and replay, never a 503 for every keyed request. The secret stays in clear; the responses are
stored sealed. A face without keys on a table whose secret is sealed refuses (503) rather than
scope requests with the ciphertext.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from retrysafe import Identity, open_store
from retrysafe._encryption import MAGIC
from retrysafe._flow.secret import SECRET_FINGERPRINT, SECRET_IDENTITY, SECRET_RETENTION
from retrysafe._http import RequestView, Scoper, Settings, decode_outcome
from retrysafe.stores.encrypted import Keyring
from tests.transactions.conftest import Database, make_database
from tests.transactions.test_encryption_web import (
    CALLER,
    KEY,
    KEYRING,
    Site,
    site,  # noqa: F401 - the fixture: each web face given KEYRING
)
from tests.transactions.test_web import HEADERS

CLEAR = secrets.token_bytes(32)


def plant_secret(database: Database, keyring: Keyring | None = None) -> None:
    """Store the table's scope secret `CLEAR`: in clear, as a store without encryption (the
    HTTP middleware before encryption was turned on) did, or sealed under `keyring`."""
    with contextlib.closing(open_store(database.url, encryption=keyring)) as store:
        claim = store.claim(
            SECRET_IDENTITY, SECRET_FINGERPRINT, lease=30, retention=SECRET_RETENTION
        )
        store.complete(SECRET_IDENTITY, claim.token, CLEAR, retention=SECRET_RETENTION)


def scoped_with_clear() -> Identity:
    """The identity of a request with `KEY` from the test's caller, scoped with `CLEAR`."""
    view = RequestView("POST", "/payments", b"", [(b"authorization", CALLER.encode())], {})
    scope = Scoper(CLEAR).scope_of(Settings(), view)
    assert scope is not None
    return Identity("http", scope, KEY)


def test_b8_a_scope_secret_stored_in_clear_is_used_as_it_is(
    site: Site,  # noqa: F811 - the fixture imported above
) -> None:
    """With the table's secret in clear, the first keyed request runs and its retry replays
    (no 503); the response lies under the scope the clear secret gives, sealed, and the secret
    is still the same 32 bytes in clear."""
    plant_secret(site.database)
    first, again = site.post(2)
    assert (first.status, first.replayed) == (201, False), first.body
    assert (again.status, again.replayed, again.body) == (201, True, first.body)
    assert site.runs() == 1
    with contextlib.closing(open_store(site.database.url)) as bare:
        secret = bare.get(SECRET_IDENTITY)
        record = bare.get(scoped_with_clear())
    assert secret is not None
    assert secret.outcome == CLEAR
    assert record is not None
    assert record.outcome is not None
    assert record.outcome.startswith(MAGIC)  # the response is sealed all the same
    assert decode_outcome(KEYRING.open_record(record).outcome or b"").body == first.body


def plain_flask(database: Database, runs: list[str]) -> Any:
    """A Flask app in transactional mode on `database`, given no keys."""
    import flask

    from retrysafe.transactions.flask import install, transactional

    app = flask.Flask(__name__)
    install(app, connect=database.connect, table=database.table)

    @app.post("/payments")
    @transactional(required=True)
    def create_payment(tx: Any) -> Any:
        runs.append(str(tx.key))
        return {"id": os.urandom(6).hex()}, 201

    return app


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_b8_a_sealed_scope_secret_without_the_keys_fails_closed(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A face given no keys on a table whose secret is sealed answers 503 and runs nothing:
    scoping with the ciphertext would give every caller another scope than the faces with
    keys give, and their retries would run again."""
    runs: list[str] = []
    with make_database(kind, request, tmp_path) as database:
        plant_secret(database, KEYRING)
        client = plain_flask(database, runs).test_client()
        answer = client.post("/payments", json={"amount": 1}, headers=HEADERS)
    assert answer.status_code == 503
    assert answer.content_type == "application/problem+json"
    assert runs == []
