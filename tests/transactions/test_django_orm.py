"""Transactional mode on Django's ORM (B29-B31): the record commits with the ORM's writes.

Each test runs the project of tests/transactions/django_app.py in a process of its own
(Django's settings are per process) on the `database` fixture: a fresh SQLite file, or the real
PostgreSQL server with tables of the test's own. What the process reports is checked against
what the database and the store hold afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrysafe import Identity, State
from retrysafe.stores.encrypted import EncryptedStore, Keyring
from tests.servers import wait_for_port_file
from tests.transactions.conftest import Database

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 120.0
CALLER = {"Authorization": "Bearer tenant-a"}


def config(database: Database, **extra: object) -> str:
    """The project's CONFIG for `database`."""
    return json.dumps(
        {
            "db": database.kind,
            "dsn": database.dsn,
            "table": database.table,
            "payments": database.payments,
            **extra,
        }
    )


def scenario(database: Database, name: str) -> dict[str, Any]:
    """Run one of the project's scenarios in a process of its own; return what it reported."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.transactions.django_app", "scenario", config(database), name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("outcome:")]
    reported: dict[str, Any] = json.loads(line.removeprefix("outcome:"))
    return reported


def record(database: Database, key: str) -> Any:
    """The record of a unit of work's key, as the store sees it."""
    store = database.store()
    try:
        return store.get(Identity("orders", "tenant-a", key))
    finally:
        store.close()


def test_b29_django_atomic_commits_the_record_with_the_orm_write(database: Database) -> None:
    """A unit of work commits its ORM write with its outcome; the repeat replays it and writes
    nothing; another request under the key is refused; an error or a forgotten outcome rolls
    the write back with the claim, so the retry runs; a commit inside the block is refused by
    Django's atomic, and nothing of it is kept."""
    reported = scenario(database, "unit")
    first = reported["first"]
    assert first["replay"] is False
    assert reported["again"] == {"replay": True, "outcome": first["outcome"]}
    assert reported["mismatch"] == "KeyMismatchError"
    assert (reported["error"], reported["forgot"]) == ("BoomError", "RuntimeError")
    assert reported["after_error"]["replay"] is False
    (row,) = database.payment_rows("k-1")
    assert first["outcome"] == json.dumps({"id": row[0]})
    done = record(database, "k-1")
    assert done.state is State.DONE
    assert done.outcome == first["outcome"].encode()
    assert len(database.payment_rows("k-2")) == 1  # the retry after the error, only
    assert database.payment_rows("k-3") == []
    assert record(database, "k-3") is None
    assert reported["committed_inside"] == "TransactionManagementError"
    assert database.payment_rows("k-4") == []
    assert record(database, "k-4") is None


def test_b29_django_atomic_commits_and_rolls_back_with_the_callers_atomic_block(
    database: Database,
) -> None:
    """Inside the caller's `transaction.atomic()` the record is a savepoint's: rolled back
    when that block rolls back, committed when it commits; a block marked for rollback
    refuses to store an outcome (`TransactionAbortedError`), and nothing commits."""
    reported = scenario(database, "nested")
    assert reported["rolled_back"]["replay"] is False
    assert database.payment_rows("n-1") == []
    assert record(database, "n-1") is None
    (row,) = database.payment_rows("n-2")
    assert reported["committed"]["outcome"] == json.dumps({"id": row[0]})
    assert record(database, "n-2").state is State.DONE
    assert reported["in_block"] is True
    assert reported["marked"] == "TransactionAbortedError"
    assert database.payment_rows("n-3") == []
    assert record(database, "n-3") is None
    assert reported["outside"] is False


def test_b8_a_scope_secret_rolled_back_with_a_request_is_not_kept(database: Database) -> None:
    """A process whose first keyed request ran in a block that rolled back (ATOMIC_REQUESTS
    and a view that raised) does not keep the scope secret created in it: its payment is
    scoped by the committed secret, so another process's retry replays it (before: the other
    process made another secret, and the retry paid again)."""
    database.store().close()  # the records table exists, with no scope secret in it yet
    first = scenario(database, "secret_rolled_back")
    retry = scenario(database, "secret_retry")
    assert (first["status"], first["replay"]) == (201, False)
    assert (retry["status"], retry["replay"]) == (201, True)
    assert retry["outcome"] == first["outcome"]
    assert len(database.payment_rows("s-1")) == 1
    assert database.payment_rows("s-0") == []


def test_b8_a_scope_secret_made_in_a_request_block_is_kept_once_it_commits(
    database: Database,
) -> None:
    """Under ATOMIC_REQUESTS, the process that made the scope secret in a request's atomic
    block keeps it once that block commits: its later requests do not read it again."""
    database.store().close()  # the records table exists, with no scope secret in it yet
    reported = scenario(database, "secret_kept_after_commit")
    assert reported["statuses"] == [201, 201, 201]
    assert reported["loads"] == [False]  # made inside the block; kept when it committed


def test_b30_django_phases_resume_after_the_last_committed_phase(database: Database) -> None:
    """Atomic phases on Django's connection: a phase that fails rolls back its ORM write and
    keeps the recovery point; the retry resumes there, a repeat replays, and phases refuse to
    start inside an atomic block."""
    reported = scenario(database, "phases")
    assert reported["failed"] == "BoomError"
    assert reported["amount"] == 0  # the failed phase's update rolled back
    outcome = json.dumps({"amount": 100})
    assert reported["resumed"] == [outcome, False, "reserve", ["charge", "finish"]]
    assert reported["replayed"] == [outcome, True, None, []]
    assert reported["in_atomic"] == "ConfigurationError"
    assert database.payment_rows("o-1") == [("order", "o-1", 100)]
    assert record(database, "o-1").state is State.DONE


def test_django_atomic_and_phases_seal_their_outcomes_with_encryption(
    database: Database,
) -> None:
    """`atomic(encryption=...)` and `run_phases(encryption=...)` store their outcomes sealed:
    the raw records table holds no plaintext of them, the replay opens the outcome, and a store
    given the same keys reads both records, as the HTTP faces would."""
    reported = scenario(database, "sealed")
    marker = reported["marker"]
    assert reported["again"] == reported["first"]
    assert marker in reported["first"]
    assert reported["phased"] == json.dumps({"card": marker})
    raw = database.execute(f'SELECT outcome FROM "{database.table}"')  # noqa: S608 - the test's
    assert len(raw) == 2
    assert all(marker.encode() not in bytes(outcome) for (outcome,) in raw)
    store = EncryptedStore(database.store(), Keyring([reported["key"]]))
    try:
        for key, outcome in (("s-1", reported["first"]), ("s-2", reported["phased"])):
            sealed = store.get(Identity("orders", "tenant-a", key))
            assert sealed is not None
            assert sealed.outcome == outcome.encode()
    finally:
        store.close()


def test_b31_django_write_helpers_repeat_safely(database: Database) -> None:
    """insert_if_absent, update_by_key and delete_by_key on a model or a table name, in
    Django's transaction: each repeat leaves the same rows."""
    reported = scenario(database, "writes")
    assert reported["inserted"] == [True, False, 1]
    row = {"id": "w-1", "key": "w", "amount": 5}
    assert reported["updated"] == [row, row]
    assert reported["deleted"] == [True, False]
    assert database.payment_rows("w") == []


@pytest.fixture
def served(database: Database, tmp_path: Path) -> Iterator[httpx.Client]:
    """The project served by waitress on `database`; a client for it."""
    port_file = tmp_path / "port"
    command = [sys.executable, "-m", "tests.transactions.django_app", "serve", config(database)]
    with (tmp_path / "server.log").open("ab") as log:
        process = subprocess.Popen(
            [*command, str(port_file)],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        port = wait_for_port_file(port_file, 60, alive=lambda: process.poll() is None)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=CALLER, timeout=SECONDS
        ) as client:
            yield client
    finally:
        process.terminate()
        process.wait(10)


def _post(client: httpx.Client, path: str, key: str | None, **body: object) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(path, json=body, headers=headers)


def test_b29_b10_django_view_commits_its_response_with_its_writes(
    database: Database, served: httpx.Client
) -> None:
    """A `@transactional` view through a real server: its ORM write and its response commit
    together; a repeat replays the response byte for byte and writes nothing; another request
    under the key gets 422, a request without a required key 400; a view that raises or
    answers 5xx commits nothing, so its retry runs; a streamed response is read whole and
    commits too."""
    first = _post(served, "/payments", "p-1", amount=100)
    assert first.status_code == 201, first.text
    again = _post(served, "/payments", "p-1", amount=100)
    assert (again.status_code, again.content) == (201, first.content)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    (row,) = database.payment_rows("p-1")
    assert first.json() == {"id": row[0]}
    mismatch = _post(served, "/payments", "p-1", amount=200)
    assert mismatch.status_code == 422
    assert mismatch.headers["Content-Type"] == "application/problem+json"
    assert _post(served, "/payments", None, amount=100).status_code == 400
    assert _post(served, "/payments", "p-2", amount=100, fail=True).status_code == 500
    assert _post(served, "/payments", "p-3", amount=100, status=503).status_code == 503
    assert database.payment_rows("p-2") == database.payment_rows("p-3") == []
    assert _post(served, "/payments", "p-2", amount=100).status_code == 201
    keyless = _post(served, "/optional", None, amount=7)
    assert (keyless.status_code, keyless.json()["key"]) == (201, None)
    streamed = _post(served, "/stream", "s-1")
    assert (streamed.status_code, _post(served, "/stream", "s-1").content) == (
        201,
        streamed.content,
    )
    (paid,) = database.payment_rows("s-1")
    assert streamed.content == f"paid {paid[0]}".encode()
    store = database.store()
    try:
        records = {r.identity.key: r.state for r in store.list_records(namespace="http")}
    finally:
        store.close()
    assert records == {"p-1": State.DONE, "p-2": State.DONE, "s-1": State.DONE}


def test_b14_django_view_runs_once_under_concurrent_duplicates(
    database: Database, served: httpx.Client
) -> None:
    """Duplicates sent at once to a `@transactional` view wait for the first one's commit
    and replay it: one payment, one answer."""
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: _post(served, "/payments", "c-1", amount=5), range(12)))
    assert {(a.status_code, a.content) for a in answers} == {(201, answers[0].content)}
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 11
    (row,) = database.payment_rows("c-1")
    assert answers[0].json() == {"id": row[0]}


def test_the_django_module_exports_and_refuses_async_views() -> None:
    """`retrysafe.transactions.django` has a sorted `__all__` of what it defines, and
    `@transactional` refuses an async view at once: Django's transactions are sync."""
    from retrysafe.transactions import django as idempotent

    exported = list(idempotent.__all__)
    assert exported == sorted(exported)
    assert all(hasattr(idempotent, name) for name in exported)
    assert {"atomic", "run_phases", "transactional", "insert_if_absent"} <= set(exported)

    async def view(request: object, tx: object) -> None:
        """An async view."""

    with pytest.raises(TypeError, match="sync"):
        idempotent.transactional()(view)
