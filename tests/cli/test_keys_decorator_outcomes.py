"""`keys show` decodes a decorated function's stored outcome (the serializer's form turned
back into the value it holds) on every backend; HTTP outcomes are shown as before."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from retrysafe import Identity, OutcomeError, idempotent, open_store
from tests.cli.test_keys import as_json, keys

PAID_AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Receipt:
    """What the decorated payment returns: a dataclass holding tagged types."""

    order: str
    amount: Decimal
    paid_at: dt.datetime
    tags: frozenset[str]


class DeclinedError(Exception):
    """A final exception: stored as the outcome and raised again on replay."""


@pytest.fixture
def decorated(cli_store_url: str) -> str:
    """A store holding the outcomes of real decorated calls: a return value of each kind, a
    final exception, and a value that could not be serialized."""
    store = open_store(cli_store_url)
    try:

        @idempotent(store, key="order", namespace="payments", final_exceptions=(DeclinedError,))
        def pay(order: str, *, declined: bool = False) -> Receipt:
            if declined:
                raise DeclinedError(order, "insufficient funds")
            return Receipt(order, Decimal("19.99"), PAID_AT, frozenset({"card"}))

        @idempotent(store, key="order", namespace="plain")
        def summary(order: str) -> object:
            if order == "order-45":
                return object()
            return {"order": order, "items": (1, 2), "total": 1999}

        @idempotent(store, key="batch", namespace="batches", final_exceptions=(DeclinedError,))
        def pay_all(batch: str) -> None:
            inner = ExceptionGroup("retried", [DeclinedError(f"{batch}-3", "expired")])
            raise ExceptionGroup("batch", [DeclinedError(f"{batch}-1", "stolen"), inner])

        pay("order-42")
        with pytest.raises(DeclinedError):
            pay("order-43", declined=True)
        with pytest.raises(ExceptionGroup):
            pay_all("batch-1")
        summary("order-44")
        with pytest.raises(OutcomeError):
            summary("order-45")
    finally:
        store.close()
    return cli_store_url


def shown_outcome(runner: CliRunner, url: str, key: str, namespace: str) -> object:
    """The `outcome` of `keys show KEY --namespace NAMESPACE --json`."""
    return as_json(keys(runner, url, "show", key, "--namespace", namespace, "--json"))["outcome"]


def test_show_decodes_a_decorated_functions_return_value(runner: CliRunner, decorated: str) -> None:
    """A dataclass holding a Decimal, a datetime and a frozenset is shown as its class, its
    fields as plain JSON, and how Python would print it; a dict with a tuple likewise."""
    assert shown_outcome(runner, decorated, "order-42", "payments") == {
        "kind": "returned",
        "type": f"{__name__}:Receipt",
        "value": {
            "order": "order-42",
            "amount": "19.99",
            "paid_at": "2026-01-02T03:04:05+00:00",
            "tags": ["card"],
        },
        "repr": "Receipt(order='order-42', amount=Decimal('19.99'), paid_at="
        "datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), "
        "tags=frozenset({'card'}))",
    }
    assert shown_outcome(runner, decorated, "order-44", "plain") == {
        "kind": "returned",
        "type": "dict",
        "value": {"order": "order-44", "items": [1, 2], "total": 1999},
        "repr": "{'order': 'order-44', 'items': (1, 2), 'total': 1999}",
    }
    table = keys(runner, decorated, "show", "order-42", "--namespace", "payments")
    assert table.exit_code == 0, table.output
    assert '"kind": "returned"' in table.stdout
    assert "\"repr\": \"Receipt(order='order-42', amount=Decimal('19.99')" in table.stdout
    assert '"R{' not in table.stdout
    assert "$rs" not in table.stdout


def test_show_decodes_a_stored_exception_and_an_unserializable_value(
    runner: CliRunner, decorated: str
) -> None:
    """A final exception is shown by its class, message and arguments, a group with the
    exceptions it held; a value that could not be serialized by its type and the reason."""
    assert shown_outcome(runner, decorated, "order-43", "payments") == {
        "kind": "raised",
        "type": f"{__name__}:DeclinedError",
        "message": str(DeclinedError("order-43", "insufficient funds")),
        "args": ["order-43", "insufficient funds"],
    }
    declined = f"{__name__}:DeclinedError"
    assert shown_outcome(runner, decorated, "batch-1", "batches") == {
        "kind": "raised",
        "type": "builtins:ExceptionGroup",
        "message": "batch",
        "args": None,
        "exceptions": f"{declined}: ('batch-1-1', 'stolen')\n"
        "builtins:ExceptionGroup: retried\n"
        f"  {declined}: ('batch-1-3', 'expired')",
    }
    unserializable = shown_outcome(runner, decorated, "order-45", "plain")
    assert isinstance(unserializable, dict)
    assert unserializable["kind"] == "unserializable"
    assert unserializable["type"] == "builtins:object"
    assert unserializable["error"].startswith("TypeError: A builtins:object cannot be serialized")


@pytest.mark.parametrize("cli_store_url", ["sqlite"], indirect=True)
def test_show_keeps_outcomes_it_cannot_decode_raw(runner: CliRunner, cli_store_url: str) -> None:
    """Bytes that only look like a decorator's outcome (not JSON, a tag the serializer does
    not write, or a group nested deeper than Python can read) are shown as stored."""
    group = '{"type": "g", "message": "m", "group": [' * 3000 + "]}" * 3000
    deep = ("deep", f"E{group}".encode())
    store = open_store(cli_store_url)
    try:
        for key, outcome in (("rock", b"Rock"), ("bad-tag", b'R{"$rs": "nope", "v": 1}'), deep):
            identity = Identity("raw", "", key)
            claim = store.claim(identity, "fp", lease=60, retention=3600)
            store.complete(identity, claim.token, outcome, retention=3600)
    finally:
        store.close()
    assert shown_outcome(runner, cli_store_url, "rock", "raw") == {"kind": "raw", "text": "Rock"}
    assert shown_outcome(runner, cli_store_url, "bad-tag", "raw") == {
        "kind": "raw",
        "text": 'R{"$rs": "nope", "v": 1}',
    }
    assert shown_outcome(runner, cli_store_url, "deep", "raw") == {
        "kind": "raw",
        "text": deep[1].decode(),
    }
