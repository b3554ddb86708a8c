"""Encryption at rest on the transactional web faces: FastAPI, Flask, ASGI and Django's ORM.

Each face is given a keyring (`encryption=`, Django's `RETRYSAFE["ENCRYPTION"]`) on a real
SQLite file and PostgreSQL server. A keyed request runs once and its retry replays the body; the
records table holds the response and the scope secret only sealed, and an encrypted store on
the table (the HTTP middleware's) reads both; a record sealed with another key answers 503 and
the handler does not run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from retrysafe import Identity, ManualClock, open_store
from retrysafe._flow.secret import SECRET_FINGERPRINT, SECRET_IDENTITY
from retrysafe._http import Response, RouteSettings, decode_outcome
from retrysafe.stores.encrypted import Keyring
from retrysafe.transactions.asgi import TransactionalMiddleware
from retrysafe.transactions.fastapi import Transactional, install
from tests.transactions.conftest import Database, Face, make_database
from tests.transactions.test_django_orm import ROOT, SECONDS, config
from tests.transactions.test_encryption import records_table
from tests.transactions.test_web import HEADERS, KEY, PaymentIn, _connect, _insert, serving

KEYS_ENV = "RETRYSAFE_TEST_WEB_KEYS"
KEY_TEXT = Keyring.generate_key()
KEYRING = Keyring([KEY_TEXT])
OTHER = Keyring([Keyring.generate_key()])
CALLER = HEADERS["Authorization"]
FACES = [
    "fastapi/sqlite",
    "fastapi/postgres-session",
    "fastapi/postgres-psycopg",
    "asgi/sqlite",
    "asgi/postgres-psycopg",
    "flask/sqlite",
    "flask/postgres",
    "django/sqlite",
    "django/postgres",
]


@dataclass(frozen=True)
class Answer:
    """What a client got back."""

    status: int
    content_type: str
    replayed: bool
    body: bytes


@dataclass
class Site:
    """One web face on one database, given `KEYRING`.

    Args:
        database: where the payments and the records are.
        post: sends that many keyed payment requests, one after another; returns the answers.
        runs: how many times the handler has run (Django's, in its own process: how many
            payments it committed).
    """

    database: Database
    post: Callable[[int], list[Answer]]
    runs: Callable[[], int]


def _http_answer(response: httpx.Response) -> Answer:
    return Answer(
        response.status_code,
        response.headers.get("content-type", ""),
        response.headers.get("idempotent-replayed") == "true",
        response.content,
    )


def fastapi_app(database: Database, flavor: str, runs: list[str]) -> Any:
    """A FastAPI app whose payment handler writes in transactional mode, encrypted."""
    app = FastAPI()
    install(app, connect=_connect(database, flavor), table=database.table, encryption=KEYRING)

    @app.post("/payments", status_code=201)
    async def create_payment(body: PaymentIn, tx: Transactional) -> Any:
        runs.append(str(tx.key))
        return {"id": await _insert(tx.connection, database, body.amount)}

    return app


def asgi_app(database: Database, flavor: str, runs: list[str]) -> Any:
    """A bare ASGI app behind the transactional middleware, encrypted."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        tx = scope["retrysafe.transaction"]
        runs.append(str(tx.key))
        body = json.dumps({"id": await _insert(tx.connection, database, 1)}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return TransactionalMiddleware(
        app,
        connect=_connect(database, flavor),
        table=database.table,
        routes={"/payments": RouteSettings(required=True)},
        encryption=KEYRING,
    )


def flask_app(database: Database, runs: list[str]) -> Any:
    """A Flask app whose payment view writes in transactional mode, encrypted."""
    import flask

    from retrysafe import transactions
    from retrysafe.transactions.flask import install as install_flask
    from retrysafe.transactions.flask import transactional

    app = flask.Flask(__name__)
    install_flask(app, connect=database.connect, table=database.table, encryption=KEYRING)

    @app.post("/payments")
    @transactional(required=True)
    def create_payment(tx: Any) -> Any:
        runs.append(str(tx.key))
        payment = {"id": os.urandom(6).hex(), "key": KEY, "amount": 1}
        transactions.insert_if_absent(tx.connection, database.payments, payment, unique=["id"])
        return {"id": payment["id"]}, 201

    return app


@contextlib.contextmanager
def _asgi_poster(app: Any) -> Iterator[Callable[[int], list[Answer]]]:
    with serving(app) as http:
        yield lambda count: [
            _http_answer(http.post("/payments", json={"amount": 1}, headers=HEADERS))
            for _ in range(count)
        ]


def _flask_poster(app: Any) -> Callable[[int], list[Answer]]:
    client = app.test_client()

    def answer(response: Any) -> Answer:
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        return Answer(response.status_code, response.content_type, replayed, response.data)

    return lambda count: [
        answer(client.post("/payments", json={"amount": 1}, headers=HEADERS)) for _ in range(count)
    ]


# Django: the project of tests/transactions/django_app.py in a process of its own, whose
# `scenario_encrypted` (`django_requests`, below) posts under RETRYSAFE["ENCRYPTION"].
_DJANGO = (
    "import runpy\n"
    "from tests.transactions.test_encryption_web import django_requests\n"
    "runpy.run_module('tests.transactions.django_app', run_name='__main__', alter_sys=True, "
    "init_globals={'scenario_encrypted': django_requests})\n"
)


def django_requests() -> dict[str, Any]:
    """In the Django project's process: post CONFIG's `posts` payment requests through Django's
    handler, with `RETRYSAFE["ENCRYPTION"]` the keyring of the environment; return the answers."""
    from django.conf import settings
    from django.test import Client, override_settings

    posts = json.loads(sys.argv[2])["posts"]
    encrypted = {**settings.RETRYSAFE, "ENCRYPTION": Keyring.from_env(KEYS_ENV)}
    client = Client(headers=HEADERS)
    answers = []
    with override_settings(RETRYSAFE=encrypted):
        for _ in range(posts):
            response = client.post("/payments", b'{"amount": 1}', content_type="application/json")
            replayed = response.get("Idempotent-Replayed") == "true"
            answers.append(
                [
                    response.status_code,
                    response["Content-Type"],
                    replayed,
                    response.content.decode(),
                ]
            )
    return {"answers": answers}


def _django_poster(database: Database) -> Callable[[int], list[Answer]]:
    def post(count: int) -> list[Answer]:
        result = subprocess.run(
            [sys.executable, "-c", _DJANGO, "scenario", config(database, posts=count), "encrypted"],
            cwd=ROOT,
            env={**os.environ, KEYS_ENV: KEY_TEXT},
            capture_output=True,
            text=True,
            timeout=SECONDS,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        (line,) = [line for line in result.stdout.splitlines() if line.startswith("outcome:")]
        answers = json.loads(line.removeprefix("outcome:"))["answers"]
        return [Answer(s, t, r, body.encode()) for s, t, r, body in answers]

    return post


@pytest.fixture(params=FACES)
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """Each web face, given `KEYRING`, on a fresh SQLite file or the real PostgreSQL server."""
    face, flavor = str(request.param).split("/")
    runs: list[str] = []
    with make_database(flavor.split("-", maxsplit=1)[0], request, tmp_path) as database:
        if face == "django":
            yield Site(database, _django_poster(database), lambda: len(database.payment_rows()))
        elif face == "flask":
            yield Site(database, _flask_poster(flask_app(database, runs)), lambda: len(runs))
        else:
            make = fastapi_app if face == "fastapi" else asgi_app
            with _asgi_poster(make(database, flavor, runs)) as post:
                yield Site(database, post, lambda: len(runs))


def stored_response(database: Database) -> Response:
    """The response stored for `KEY`, read through an encrypted store on the records table:
    the scope secret and the record both open, as they do for the HTTP middleware."""
    with contextlib.closing(open_store(database.url, encryption=KEYRING)) as store:
        record = store.get(_identity(store))
    assert record is not None
    assert record.outcome is not None
    return decode_outcome(record.outcome)


def _identity(store: Any) -> Identity:
    """The identity of a request with `KEY` from the test's caller, by the table's secret."""
    from retrysafe._http import RequestView, Scoper, Settings

    secret = store.get(SECRET_IDENTITY)
    view = RequestView("POST", "/payments", b"", [(b"authorization", CALLER.encode())], {})
    scope = Scoper(secret.outcome).scope_of(Settings(), view)
    assert scope is not None
    return Identity("http", scope, KEY)


def reseal(database: Database) -> None:
    """Replace `KEY`'s stored response with one sealed for the same record under `OTHER`, as
    an instance given other keys would have stored it."""
    with contextlib.closing(open_store(database.url, encryption=KEYRING)) as store:
        identity = _identity(store)
    sealed = OTHER.seal(identity, b"a response")
    database.execute(
        f"UPDATE {database.table} SET outcome = ? WHERE key = ?",  # noqa: S608 - a unique_name() table
        (sealed, KEY.encode()),
    )


def test_a_keyed_request_runs_once_and_its_response_is_stored_sealed(site: Site) -> None:
    """The first request runs the handler; the retry replays its body byte for byte without
    running it; the records table holds neither the body nor the scope secret in clear, and an
    encrypted store on the table reads both."""
    first, again = site.post(2)
    assert (first.status, first.replayed) == (201, False)
    assert (again.status, again.replayed, again.body) == (201, True, first.body)
    assert site.runs() == 1
    payment_id = json.loads(first.body)["id"]
    assert [row[0] for row in site.database.payment_rows()] == [payment_id]
    contents = records_table(Face("web", site.database, ManualClock()))
    assert KEY.encode() in contents  # the reader sees the records: the key is kept in clear
    assert payment_id.encode() not in contents
    assert stored_response(site.database).body == first.body
    with contextlib.closing(open_store(site.database.url)) as bare:
        secret = bare.get(SECRET_IDENTITY)
    assert secret is not None
    assert secret.outcome is not None
    assert secret.outcome.startswith(b"rse\x01")  # sealed, not the 32 bytes in clear


def test_a_record_sealed_with_another_key_fails_closed(site: Site) -> None:
    """A retry that finds its response sealed with a key the face was not given answers 503
    problem+json, never the ciphertext, and does not run the handler again."""
    (first,) = site.post(1)
    assert first.status == 201
    reseal(site.database)
    (retry,) = site.post(1)
    assert retry.status == 503
    assert retry.content_type == "application/problem+json"
    assert not retry.replayed
    assert site.runs() == 1
    assert len(site.database.payment_rows()) == 1


@pytest.mark.parametrize("flavor", ["sqlite", "postgres-psycopg"])
def test_the_face_opens_a_scope_secret_an_encrypted_store_sealed(
    flavor: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The scope secret an encrypted store (the HTTP middleware's) created first is the one the
    transactional face scopes requests with: both sides of one table agree on it."""
    runs: list[str] = []
    with make_database(flavor.split("-", maxsplit=1)[0], request, tmp_path) as database:
        with contextlib.closing(open_store(database.url, encryption=KEYRING)) as store:
            claim = store.claim(SECRET_IDENTITY, SECRET_FINGERPRINT, lease=30, retention=3600)
            store.complete(SECRET_IDENTITY, claim.token, b"s" * 32, retention=3600)
        with _asgi_poster(asgi_app(database, flavor, runs)) as post:
            (first,) = post(1)
        assert first.status == 201
        assert stored_response(database).body == first.body
