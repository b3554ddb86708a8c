"""`retrysafe keys` on SQLite, PostgreSQL, MySQL and Redis, against a store holding known
records."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner, Result

from retrysafe import Identity, open_async_store, open_store
from retrysafe._fingerprint import fingerprint_request
from retrysafe._flow import SyncFlow
from retrysafe._flow.secret import SECRET_IDENTITY, load_secret
from retrysafe.cli import app
from retrysafe.demo import DemoDatabase, create_app
from retrysafe.demo._relay import serve_asgi
from tests.cli.conftest import HTTP_BODY, KnownRecords
from tests.conftest import drop_mysql_tables, drop_postgres_tables, unique_name
from tests.http.conftest import credential_scope

SCOPE_SECRET = "the cli tests' scope secret"


def keys(runner: CliRunner, store: str, *args: str) -> Result:
    """Run `retrysafe keys ARGS --store STORE`."""
    return runner.invoke(app, ["keys", *args, "--store", store])


def as_json(result: Result) -> dict[str, object]:
    """The command's JSON output, after checking it succeeded."""
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def listed(result: Result) -> set[tuple[str, str, str]]:
    """The (namespace, scope, key) of each record a `list --json` printed."""
    records = as_json(result)["records"]
    assert isinstance(records, list)
    return {(r["namespace"], r["scope"], r["key"]) for r in records}


def ids(*identities: Identity) -> set[tuple[str, str, str]]:
    """Identities as `listed` gives them."""
    return {(i.namespace, i.scope, i.key) for i in identities}


def test_b35_list_shows_every_live_record_with_its_scope(
    runner: CliRunner, known: KnownRecords
) -> None:
    """The list names each live record's scope and key; expired ones are not shown."""
    assert listed(keys(runner, known.url, "list", "--json")) == ids(
        known.done, known.raw, known.in_flight
    )
    table = keys(runner, known.url, "list")
    assert table.exit_code == 0
    for text in ("scope-a", "scope-b", "order-1", "stuck-1", "done", "in flight"):
        assert text in table.stdout
    assert "old-1" not in table.stdout


def test_list_fields(runner: CliRunner, known: KnownRecords) -> None:
    """Each listed record has its state, age, expiry, lease owner and size."""
    records = as_json(keys(runner, known.url, "list", "--json", "--scope", "scope-a"))["records"]
    assert isinstance(records, list)
    by_key = {r["key"]: r for r in records}
    done, stuck = by_key["order-1"], by_key["stuck-1"]
    assert done["state"] == "done"
    assert done["size"] > len(HTTP_BODY)
    assert 5 < done["age_seconds"] < 600
    assert stuck["state"] == "in_flight"
    assert stuck["lease_live"] is True
    assert len(stuck["lease_owner"]) >= 16
    assert stuck["size"] == 0


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--state", "in_flight"], "in_flight"),
        (["--state", "done"], "done"),
        (["--scope", "scope-b"], "raw"),
        (["--namespace", "functions"], "raw"),
        (["--older-than", "30m"], "in_flight"),
        (["--older-than", "1h30m"], None),
    ],
)
def test_list_filters(
    runner: CliRunner, known: KnownRecords, options: list[str], expected: str | None
) -> None:
    """--state, --scope, --namespace and --older-than each narrow the list."""
    result = keys(runner, known.url, "list", "--json", *options)
    wanted = {
        "in_flight": ids(known.in_flight),
        "done": ids(known.done, known.raw),
        "raw": ids(known.raw),
        None: set(),
    }[expected]
    assert listed(result) == wanted


def test_show_decodes_a_stored_http_response(runner: CliRunner, known: KnownRecords) -> None:
    """`show` prints the record and its stored response: status, headers and body."""
    result = keys(runner, known.url, "show", "order-1", "--scope", "scope-a", "--json")
    data = as_json(result)
    assert data["state"] == "done"
    assert data["outcome"] == {
        "kind": "http",
        "status": 201,
        "headers": [["content-type", "application/json"]],
        "body": HTTP_BODY.decode(),
    }
    table = keys(runner, known.url, "show", "order-1", "--scope", "scope-a")
    assert table.exit_code == 0
    assert '"status": 201' in table.stdout


def test_show_prints_a_raw_outcome_as_text(runner: CliRunner, known: KnownRecords) -> None:
    """An outcome that is not an HTTP response is shown as it was stored."""
    data = as_json(
        keys(
            runner,
            known.url,
            "show",
            "order-1",
            "--scope",
            "scope-b",
            "--namespace",
            "functions",
            "--json",
        )
    )
    assert data["outcome"] == {"kind": "raw", "text": "[42]"}


def test_show_an_ambiguous_key_asks_for_the_scope(runner: CliRunner, known: KnownRecords) -> None:
    """A key present in two scopes is not guessed: exit 2 and name the scopes."""
    result = keys(runner, known.url, "show", "order-1")
    assert result.exit_code == 2
    assert "scope-a" in result.stderr
    assert "scope-b" in result.stderr


def test_show_a_missing_key_fails_in_one_line(runner: CliRunner, known: KnownRecords) -> None:
    """An unknown key (or an expired one) is one line of error and exit 1."""
    for key in ("nope", "old-1"):
        result = keys(runner, known.url, "show", key)
        assert result.exit_code == 1
        assert result.stderr.strip().startswith("error:")
        assert len(result.stderr.strip().splitlines()) == 1


def test_delete_removes_one_record(runner: CliRunner, known: KnownRecords) -> None:
    """`delete` removes the chosen record and leaves the others."""
    data = as_json(keys(runner, known.url, "delete", "stuck-1", "--json"))
    assert data["deleted"] is True
    assert listed(keys(runner, known.url, "list", "--json")) == ids(known.done, known.raw)


def test_purge_deletes_expired_records(runner: CliRunner, known: KnownRecords) -> None:
    """`purge` deletes what is past its retention (Redis may have expired it itself)."""
    data = as_json(keys(runner, known.url, "purge", "--json", "--batch", "1"))
    purged = data["purged"]
    assert isinstance(purged, int)
    assert purged == 2 or (known.url.startswith("redis") and purged <= 2)
    assert as_json(keys(runner, known.url, "purge", "--json"))["purged"] == 0
    assert listed(keys(runner, known.url, "list", "--json")) == ids(
        known.done, known.raw, known.in_flight
    )


def test_stats_counts_by_state(runner: CliRunner, known: KnownRecords) -> None:
    """`stats` gives counts by state, bytes stored and the oldest in-flight claim."""
    data = as_json(keys(runner, known.url, "stats", "--json"))
    assert (data["in_flight"], data["done"], data["total"]) == (1, 2, 3)
    assert isinstance(data["bytes_stored"], int)
    assert data["bytes_stored"] > len(HTTP_BODY)
    age = data["oldest_in_flight_age_seconds"]
    assert isinstance(age, float)
    assert 3500 < age < 4000
    table = keys(runner, known.url, "stats")
    assert table.exit_code == 0
    assert "in flight" in table.stdout


def test_stats_of_an_empty_store(runner: CliRunner, cli_store_url: str) -> None:
    """An empty store has zero counts and no oldest claim."""
    data = as_json(keys(runner, cli_store_url, "stats", "--json"))
    assert (data["total"], data["oldest_in_flight_at"]) == (0, None)
    assert "No records" in keys(runner, cli_store_url, "list").stdout


@pytest.fixture
def served_api(cli_store_url: str) -> Iterator[str]:
    """The demo API on this store, answering an in-flight duplicate with 409 at once; its
    scope secret is `SCOPE_SECRET`, so a test can name the scope of a request."""
    prefix = f"{unique_name()}_"
    database = DemoDatabase.for_store_url(cli_store_url, prefix=prefix)
    try:
        store = open_async_store(cli_store_url)
        app_ = create_app(database, store=store, wait=0, scope_secret=SCOPE_SECRET)
        with serve_asgi(app_, lifespan="on") as url:
            yield url
    finally:
        database.close()
        if cli_store_url.startswith("postgresql"):
            drop_postgres_tables(cli_store_url, f"{prefix}payments", f"{prefix}users")
        elif cli_store_url.startswith("mysql"):
            drop_mysql_tables(cli_store_url, prefix)  # LIKE 'prefix%': the demo's two tables


def test_b16_delete_unsticks_an_in_flight_key(
    runner: CliRunner, cli_store_url: str, served_api: str
) -> None:
    """A key whose request died holding a live lease answers 409; after `delete` it runs."""
    body = b'{"customer": "ada", "amount": 1999, "currency": "EUR"}'
    authorization = "Bearer tenant-a"
    stuck = Identity("http", credential_scope(SCOPE_SECRET, "bearer tenant-a"), "stuck-key")
    store = open_store(cli_store_url)
    try:  # the claim of a request whose process died mid-payment
        store.claim(
            stuck, fingerprint_request("POST", "/payments", body), lease=3600, retention=3600
        )
    finally:
        store.close()
    headers = {
        "Authorization": authorization,
        "Idempotency-Key": '"stuck-key"',
        "Content-Type": "application/json",
    }
    with httpx.Client(base_url=served_api, headers=headers, trust_env=False) as client:
        blocked = client.post("/payments", content=body)
        deleted = keys(runner, cli_store_url, "delete", "stuck-key")
        retried = client.post("/payments", content=body)
        listed_payments = client.get("/payments").json()["payments"]
    assert blocked.status_code == 409
    assert deleted.exit_code == 0, deleted.output
    assert "runs again" in deleted.stdout
    assert retried.status_code == 201
    assert [p["id"] for p in listed_payments] == [retried.json()["id"]]


INTERNAL = SECRET_IDENTITY.namespace


@pytest.fixture
def secured(cli_store_url: str, request: pytest.FixtureRequest) -> tuple[KnownRecords, bytes]:
    """The known records, in a store whose scope secret the middleware's loader made first."""
    store = open_store(cli_store_url)
    try:
        secret = load_secret(SyncFlow(store))
    finally:
        store.close()
    known: KnownRecords = request.getfixturevalue("known")
    return known, secret


def test_b8_list_hides_the_scope_secret_unless_its_namespace_is_named(
    runner: CliRunner, secured: tuple[KnownRecords, bytes]
) -> None:
    """`list` shows the app's records only; --namespace retrysafe.internal shows the secret's."""
    known, _ = secured
    assert listed(keys(runner, known.url, "list", "--json")) == ids(
        known.done, known.raw, known.in_flight
    )
    table = keys(runner, known.url, "list")
    assert table.exit_code == 0
    assert INTERNAL not in table.stdout
    assert "scope-secret" not in table.stdout
    # The secret is the newest record: a limit still counts the app's records only.
    assert listed(keys(runner, known.url, "list", "--json", "--limit", "2")) == ids(
        known.done, known.raw
    )
    internal = keys(runner, known.url, "list", "--json", "--namespace", INTERNAL)
    assert listed(internal) == ids(SECRET_IDENTITY)


def test_b8_stats_leave_the_scope_secret_out_unless_asked(
    runner: CliRunner, secured: tuple[KnownRecords, bytes]
) -> None:
    """`stats` counts the app's records; --namespace retrysafe.internal counts the secret."""
    known, secret = secured
    data = as_json(keys(runner, known.url, "stats", "--json"))
    assert (data["in_flight"], data["done"], data["total"]) == (1, 2, 3)
    age = data["oldest_in_flight_age_seconds"]
    assert isinstance(age, float)
    assert 3500 < age < 4000
    internal = as_json(keys(runner, known.url, "stats", "--json", "--namespace", INTERNAL))
    assert (internal["in_flight"], internal["done"], internal["total"]) == (0, 1, 1)
    assert internal["bytes_stored"] == len(secret)
    other = keys(runner, known.url, "stats", "--namespace", "http")
    assert other.exit_code == 2
    assert other.stderr.startswith("error: ")
    assert other.stderr.count("\n") == 1


def test_b8_show_finds_the_secret_only_by_its_namespace_and_never_prints_it(
    runner: CliRunner, secured: tuple[KnownRecords, bytes]
) -> None:
    """`show scope-secret` finds nothing; with its namespace it shows the record, not the bytes."""
    known, secret = secured
    assert keys(runner, known.url, "show", "scope-secret").exit_code == 1
    shown = keys(runner, known.url, "show", "scope-secret", "--namespace", INTERNAL, "--json")
    assert as_json(shown)["outcome"] == {"kind": "secret", "bytes": len(secret)}
    table = keys(runner, known.url, "show", "scope-secret", "--namespace", INTERNAL)
    assert table.exit_code == 0
    for output in (shown.stdout, table.stdout):
        assert secret.hex() not in output
        assert base64.b64encode(secret).decode() not in output


def test_b8_delete_refuses_the_scope_secret_and_purge_keeps_it(
    runner: CliRunner, secured: tuple[KnownRecords, bytes]
) -> None:
    """`delete` refuses the secret in one line saying why; `purge` leaves it; both still
    delete the app's records."""
    known, secret = secured
    refused = keys(runner, known.url, "delete", "scope-secret", "--namespace", INTERNAL)
    assert refused.exit_code == 2
    assert refused.stderr.startswith("error: ")
    assert refused.stderr.count("\n") == 1
    assert "scope secret" in refused.stderr
    assert "fails closed" in refused.stderr
    exact = ["--namespace", INTERNAL, "--scope", SECRET_IDENTITY.scope]
    assert keys(runner, known.url, "delete", "scope-secret", *exact).exit_code == 2
    assert keys(runner, known.url, "delete", "stuck-1").exit_code == 0
    assert as_json(keys(runner, known.url, "purge", "--json"))["purged"] <= 2
    store = open_store(known.url)
    try:
        kept = store.get(SECRET_IDENTITY)
        assert kept is not None
        assert kept.outcome == secret
        assert load_secret(SyncFlow(store)) == secret  # the middleware still finds it
    finally:
        store.close()
    assert listed(keys(runner, known.url, "list", "--json")) == ids(known.done, known.raw)
