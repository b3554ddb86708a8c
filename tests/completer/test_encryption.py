"""The completer with encryption at rest: the registry and the completer seal the outcome, the
stored request and the last error with the store's keys, given as `encryption=` or as the store
URL's `encryption_key_env`, on real SQLite files and PostgreSQL (B30)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from typer.testing import CliRunner

from retrysafe import (
    ConfigurationError,
    Identity,
    ManualClock,
    RecordUnreadableError,
    State,
    open_store,
)
from retrysafe.cli import app
from retrysafe.completer import Completer, needing_attention
from retrysafe.completer._connect import connector
from retrysafe.stores.encrypted import Keyring
from tests.completer import orders
from tests.completer.conftest import Shop

MAGIC = b"rse\x01"
KEYS_ENV = "RETRYSAFE_TEST_COMPLETER_KEYS"


class VanishedError(BaseException):
    """The client's process dies here (nothing releases its lease)."""


@pytest.fixture
def key() -> str:
    """A key of this test's own."""
    return Keyring.generate_key()


@pytest.fixture
def vanishing(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """While `on`, a run dies as its finish phase starts (the client's process); the test
    turns it off before the completer runs."""
    switch = {"on": True}

    def reach(point: str, key: str) -> None:
        if switch["on"] and point == "finish:start":
            raise VanishedError

    monkeypatch.setattr(orders, "reach", reach)
    return switch


def identity(key: str) -> Identity:
    """The identity of order `key`."""
    return Identity("orders", "tenant-a", key)


def run_client(shop: Shop, key: str, keyring: Keyring, **options: Any) -> None:
    """Run order `key` through the registry with `keyring`, as the application does."""
    conn = shop.database.connect()
    try:
        request = orders.request_of(key, **shop.spec(), **options.pop("spec", {}))
        orders.registry.run(
            conn, identity(key), request, table=shop.database.table, encryption=keyring, **options
        )
    finally:
        conn.close()


def stored_request(shop: Shop, key: str) -> bytes:
    """Return the request the resumable table holds for order `key`, as stored."""
    table = f"{shop.database.table}_resumable"
    statement = f'SELECT request FROM "{table}" WHERE id = ?'  # noqa: S608 - a test table
    rows = shop.database.execute(statement, (identity(key).digest(),))
    assert len(rows) == 1
    return bytes(rows[0][0])


def assert_sealed_outcome(shop: Shop, key: str, keyring: Keyring) -> None:
    """The order's outcome is sealed: stored as ciphertext, opened by the keys, by no others."""
    record = shop.record(key)  # a store without keys: the bytes as stored
    assert record is not None
    assert record.state is State.DONE
    assert record.outcome is not None
    assert record.outcome.startswith(MAGIC)
    assert key.encode() not in record.outcome
    store = open_store(shop.database.url, encryption=keyring)
    try:
        opened = store.get(identity(key))
    finally:
        store.close()
    assert opened is not None
    assert opened.outcome is not None
    assert opened.outcome.startswith(b'{"order": "' + key.encode())
    other = open_store(shop.database.url, encryption=Keyring([Keyring.generate_key()]))
    try:
        with pytest.raises(RecordUnreadableError):
            other.get(identity(key))
    finally:
        other.close()


def test_b30_complete_with_encryption_key_env_in_the_store_url_finishes_sealed(
    shop: Shop, key: str, vanishing: dict[str, bool]
) -> None:
    """An operation the application ran with `encryption=` stores its request sealed;
    `retrysafe complete --store URL?...&encryption_key_env=VAR` finishes it from its recovery
    point and stores its outcome sealed, which an encrypted store on the table opens."""
    order = "order-url-keys"
    with pytest.raises(VanishedError):
        run_client(shop, order, Keyring([key]), clock=ManualClock(time.time() - 100))
    request = stored_request(shop, order)
    assert request.startswith(MAGIC)
    assert order.encode() not in request
    assert shop.phases_logged(order) == ["charge", "reserve"]
    vanishing["on"] = False

    url = f"{shop.database.url}&encryption_key_env={KEYS_ENV}"
    app_ref = "tests.completer.orders:registry"
    result = CliRunner(env={KEYS_ENV: key}).invoke(
        app, ["complete", "--store", url, "--app", app_ref, "--once"]
    )
    assert result.exit_code == 0, result.output
    assert "completed 1, failed 0" in result.output, result.output

    assert shop.phases_logged(order) == ["charge", "finish", "reserve"]
    assert shop.resumable_rows() == 0
    assert_sealed_outcome(shop, order, Keyring([key]))


def test_b30_completer_with_encryption_seals_the_error_and_mark_and_retries(
    shop: Shop, key: str
) -> None:
    """`Completer(encryption=)` runs a sealed operation; the error its failed attempt keeps is
    sealed, the needs-attention mark opens with the keys, `find` gives the request in clear,
    and once fixed `retry` finishes it with its outcome sealed."""
    keyring, order = Keyring([key]), "order-blocked-sealed"
    blocker = shop.database.create_table("rs_block", "reason TEXT")
    shop.database.execute(f"INSERT INTO {blocker} VALUES ('card 4242 refused')")  # noqa: S608
    with pytest.raises(RuntimeError, match="blocked"):
        run_client(shop, order, keyring, spec={"blocker": blocker})

    completer = Completer(
        orders.registry,
        connect=shop.database.connect,
        table=shop.database.table,
        max_attempts=1,
        encryption=keyring,
    )
    assert completer.run_once().needs_attention == 1
    table = f"{shop.database.table}_resumable"
    kept = shop.database.execute(f'SELECT last_error FROM "{table}"')  # noqa: S608
    assert str(kept[0][0]).startswith("rse1:")
    assert "blocked" not in str(kept[0][0])

    store = open_store(shop.database.url, encryption=keyring)
    try:
        (attention,) = needing_attention(store)
    finally:
        store.close()
    assert attention.last_error == f"RuntimeError: order {order} is blocked"

    (row,) = completer.find(order)
    assert json.loads(row.request) == {"key": order, "blocker": blocker, **shop.spec()}
    assert row.last_error == f"RuntimeError: order {order} is blocked"

    shop.database.execute(f"DELETE FROM {blocker}")  # noqa: S608 - the cause, fixed
    assert completer.retry(identity(order)).completed == 1
    assert_sealed_outcome(shop, order, keyring)


def test_b30_a_completer_without_the_keys_never_runs_a_sealed_request(
    shop: Shop, key: str, vanishing: dict[str, bool]
) -> None:
    """A completer without keys meets a sealed request: the attempt fails with
    `RecordUnreadableError` and runs no phase (nothing finished in clear); with the keys, the
    next pass finishes it sealed."""
    order = "order-no-keys"
    with pytest.raises(VanishedError):
        run_client(shop, order, Keyring([key]), clock=ManualClock(time.time() - 100))
    vanishing["on"] = False
    before = orders.calls["finish", order]

    connect = shop.database.connect
    plain = Completer(orders.registry, connect=connect, table=shop.database.table)
    assert plain.run_once().failed == 1
    assert orders.calls["finish", order] == before
    record = shop.record(order)
    assert record is not None
    assert record.state is State.IN_FLIGHT
    table = f"{shop.database.table}_resumable"
    (error,) = shop.database.execute(f'SELECT last_error FROM "{table}"')[0]  # noqa: S608
    assert "RecordUnreadableError" in str(error)

    keyed = Completer(
        orders.registry, connect=connect, table=shop.database.table, encryption=Keyring([key])
    )
    assert keyed.run_once().completed == 1
    assert_sealed_outcome(shop, order, Keyring([key]))


def test_b30_the_completer_refuses_keys_it_cannot_use(
    shop: Shop, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys that are not a `Keyring`, keys given twice (URL and `encryption=`) and a URL whose
    `encryption_key_env` is unset are each a `ConfigurationError`, not a store in clear."""
    conn = shop.database.connect()
    try:
        with pytest.raises(ConfigurationError, match="Keyring"):
            orders.registry.run(conn, identity("order-bad"), b"{}", encryption=key)  # type: ignore[arg-type]
    finally:
        conn.close()
    url = f"{shop.database.url}&encryption_key_env={KEYS_ENV}"
    monkeypatch.delenv(KEYS_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=KEYS_ENV):
        connector(url)
    monkeypatch.setenv(KEYS_ENV, key)
    connect, table = connector(url)
    with pytest.raises(ConfigurationError, match="once"):
        Completer(orders.registry, connect=connect, table=table, encryption=Keyring([key]))
    with pytest.raises(ConfigurationError, match="Keyring"):
        Completer(orders.registry, connect=shop.database.connect, encryption=key)  # type: ignore[arg-type]
