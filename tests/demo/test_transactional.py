"""The demo's POST /payments in transactional mode: the payment and its record commit together."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from retrysafe import Identity, State, open_async_store, open_store
from retrysafe._encryption import sealed_key_id
from retrysafe._http import decode_outcome
from retrysafe.cli import app as cli
from retrysafe.demo import DemoDatabase, Payment, create_app
from retrysafe.demo._relay import serve_asgi
from retrysafe.stores.encrypted import Keyring
from tests.demo.conftest import SCOPE_SECRET, DemoStore, RunningApi, scope_of

PAYMENT = {"customer": "ada", "amount": 1999, "currency": "EUR"}
CRASH = {"customer": "crash-after-insert", "amount": 500, "currency": "EUR"}


class CrashError(Exception):
    """The handler's crash between the payment's insert and storing its outcome."""


def crash_for_the_crash_customer(payment: Payment) -> None:
    """Raise after the insert of a payment for the customer named in CRASH."""
    if payment.customer == CRASH["customer"]:
        raise CrashError(payment.id)


def identity_of(tenant: str, key: str) -> Identity:
    """The identity the middleware gives a key sent by `tenant` (scope: its Authorization)."""
    return Identity("http", scope_of(tenant), key)


@contextmanager
def serve(store_url: str, prefix: str) -> Iterator[RunningApi]:
    """The demo API whose payment handler crashes after inserting a CRASH payment."""
    database = DemoDatabase.for_store_url(store_url, prefix=prefix)
    try:
        app = create_app(
            database,
            store=open_async_store(store_url),
            latency=0.05,
            after_charge=crash_for_the_crash_customer,
            scope_secret=SCOPE_SECRET,
        )
        with serve_asgi(app, lifespan="on") as url:
            yield RunningApi(url, app, store_url)
    finally:
        database.close()


@pytest.fixture
def crashing_api(demo_store: DemoStore) -> Iterator[RunningApi]:
    """The demo API on SQLite, PostgreSQL or MySQL, with the crash hook."""
    with serve(demo_store.url, demo_store.prefix) as api:
        yield api


def test_b29_sql_stores_make_payments_transactional(api: RunningApi) -> None:
    """With a SQLite, PostgreSQL or MySQL store, POST /payments runs in transactional mode."""
    assert api.app.transactional


def test_b29_the_record_commits_beside_the_payment_in_the_same_database(api: RunningApi) -> None:
    """After a keyed payment, its record with the stored 201 is in the store's table, in the
    database and on the connection that holds the payments table."""
    with api.client() as client:
        paid = client.post("/payments", json=PAYMENT, headers={"Idempotency-Key": '"order-1"'})
    assert paid.status_code == 201
    database = api.app.database
    # One connection of the demo's own database sees both tables: one database, one schema.
    with database._connect() as conn:
        payments = conn.execute(
            database.tables.sql("SELECT id FROM {payments} WHERE tenant = ?"), ("tenant-a",)
        ).fetchall()
        quote = "`" if database.tables.dialect == "mysql" else '"'
        records = conn.execute(
            f"SELECT COUNT(*) FROM {quote}{database.records_table}{quote}"  # noqa: S608 -- ours
        ).fetchone()
    assert [row[0] for row in payments] == [paid.json()["id"]]
    assert records[0] == 1
    store = open_store(api.store_url)
    try:
        record = store.get(identity_of("tenant-a", "order-1"))
    finally:
        store.close()
    assert record is not None
    assert record.state is State.DONE
    assert record.outcome is not None
    stored = decode_outcome(record.outcome)
    assert stored.status == 201
    assert json.loads(stored.body) == paid.json()


def test_b29_a_crash_after_the_insert_leaves_neither_payment_nor_record(
    crashing_api: RunningApi,
) -> None:
    """A handler that fails between the insert and storing the outcome rolls both back, and
    the key and the database are free for the next request."""
    headers = {"Idempotency-Key": '"crash-1"'}
    with crashing_api.client() as client:
        crashed = client.post("/payments", json=CRASH, headers=headers)
        again = client.post("/payments", json=CRASH, headers=headers)
        after = client.post("/payments", json=PAYMENT, headers={"Idempotency-Key": '"ok-1"'})
    assert (crashed.status_code, again.status_code) == (500, 500)
    assert "Idempotent-Replayed" not in again.headers
    assert after.status_code == 201
    payments = crashing_api.app.database.list_payments("tenant-a")
    assert [payment.id for payment in payments] == [after.json()["id"]]
    store = open_store(crashing_api.store_url)
    try:
        assert store.get(identity_of("tenant-a", "crash-1")) is None
        assert [
            r.identity.key for r in store.list_records(scope=identity_of("tenant-a", "").scope)
        ] == ["ok-1"]
    finally:
        store.close()


def test_without_a_sql_store_a_crash_leaves_the_charge_without_its_record() -> None:
    """With a memory store the record and the payment commit apart: the crash keeps the charge
    and frees the key, so a retry would charge again (what transactional mode prevents)."""
    with serve("memory://", "retrysafe_demo_") as api:
        assert not api.app.transactional
        with api.client() as client:
            crashed = client.post("/payments", json=CRASH, headers={"Idempotency-Key": '"c"'})
        assert crashed.status_code == 500
        assert len(api.app.database.list_payments("tenant-a")) == 1


def test_b14_duplicates_at_once_wait_for_the_commit_and_replay(api: RunningApi) -> None:
    """Six identical keyed requests at once: one payment, and every answer is its 201."""
    headers = {"Idempotency-Key": '"double-click"'}

    def pay(_: int) -> tuple[int, bytes, bool]:
        with api.client() as client:
            response = client.post("/payments", json=PAYMENT, headers=headers)
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            return response.status_code, response.content, replayed

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(pay, range(6)))
    rows = api.app.database.list_payments("tenant-a")
    assert len(rows) == 1
    assert [status for status, _, _ in answers] == [201] * 6
    assert {body for _, body, _ in answers} == {answers[0][1]}
    assert sum(replayed for _, _, replayed in answers) == 5


def test_users_keep_the_idempotency_middleware(api: RunningApi) -> None:
    """POST /users is still guarded by the idempotency middleware: a keyed repeat replays."""
    headers = {"Idempotency-Key": '"user-1"'}
    user = {"email": "ada@example.com", "name": "Ada"}
    with api.client() as client:
        first = client.post("/users", json=user, headers=headers)
        again = client.post("/users", json=user, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content


def test_serve_demo_help_says_which_mode_guards_payments() -> None:
    """`retrysafe serve-demo --help` names the mode of payments for each kind of store."""
    result = CliRunner().invoke(cli, ["serve-demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "With a SQLite (the default), PostgreSQL or MySQL store, POST /payments runs" in text
    assert "transactional mode" in text
    assert "With a Redis or memory store" in text


def test_encryption_at_rest_seals_the_transactional_payments_too(tmp_path: Path) -> None:
    """With an encrypted store, the payment that POST /payments commits in transactional mode
    is sealed like every other outcome: a store with the keys opens it, and its stored bytes
    are ciphertext (before: in clear, and the encrypted store refused to read it)."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    keyring = Keyring([Keyring.generate_key()])
    database = DemoDatabase.for_store_url(url, prefix="retrysafe_demo_")
    try:
        app = create_app(
            database,
            store=open_async_store(url, encryption=keyring),
            latency=0.0,
            scope_secret=SCOPE_SECRET,
        )
        with (
            serve_asgi(app, lifespan="on") as served,
            httpx.Client(
                base_url=served, headers={"Authorization": "Bearer tenant-a"}, timeout=10
            ) as client,
        ):
            paid = client.post("/payments", json=PAYMENT, headers={"Idempotency-Key": "k-1"})
    finally:
        database.close()
    assert paid.status_code == 201
    identity = identity_of("tenant-a", "k-1")
    with contextlib.closing(open_store(url, encryption=keyring)) as sealed:
        record = sealed.get(identity)
        assert record is not None
        assert record.state is State.DONE
    with contextlib.closing(open_store(url)) as clear:
        raw = clear.get(identity)
        assert raw is not None
        assert raw.outcome is not None
        assert sealed_key_id(raw.outcome) is not None
