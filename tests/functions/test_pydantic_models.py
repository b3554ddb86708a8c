"""Pydantic models: returned ones replay equal or are not serializable (B27), arguments
fingerprint the same in every process (B26), and what the previous release stored still
replays (B39)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pydantic
import pytest

from retrysafe import ManualClock, OutcomeError, Store
from retrysafe._decorator import idempotent
from retrysafe._serializer import canonical_bytes

NAME = __name__


class Charge(pydantic.BaseModel):
    """A model with camelCase aliases, as an API's models often have."""

    order_id: str = pydantic.Field(alias="orderId")
    amount: int


class Issued(pydantic.BaseModel):
    """A model whose secret is masked in its JSON."""

    order: str
    token: pydantic.SecretStr


class Tagged(pydantic.BaseModel):
    """A model argument with a set field, and a URL (which the JSON encoding cannot hold)."""

    id: str
    tags: set[str]
    callback: pydantic.HttpUrl | None = None


class Plain(pydantic.BaseModel):
    """A model argument without a set."""

    id: str
    amount: int


def _charging(store: Store, runs: list[str]) -> Callable[[str], Charge]:
    """A decorated function that returns a model with aliases, counting its runs in `runs`."""

    @idempotent(store, key="order_id", namespace="pydantic.charge")
    def charge(order_id: str) -> Charge:
        runs.append(order_id)
        return Charge(orderId=order_id, amount=500)

    return charge


def test_b27_a_model_with_aliases_replays_equal(store: Store) -> None:
    """A model with field aliases replays equal to the first result, without running again
    (before, every replay raised OutcomeError: "Field required")."""
    runs: list[str] = []
    charge = _charging(store, runs)

    first = charge("o-1")
    again = charge("o-1")
    assert again == first == Charge(orderId="o-1", amount=500)
    assert type(again) is Charge
    assert runs == ["o-1"]


def test_b27_a_model_that_json_masks_is_not_serializable(store: Store) -> None:
    """A model with a `SecretStr` would replay its mask (`**********`), a wrong result: it is
    refused as not serializable, now and on every retry, and not run again."""
    runs: list[str] = []

    @idempotent(store, key="order", namespace="pydantic.issue")
    def issue(order: str) -> Issued:
        runs.append(order)
        return Issued(order=order, token=pydantic.SecretStr("s3cr3t"))

    with pytest.raises(OutcomeError, match="cannot be serialized") as first:
        issue("o-1")
    assert f"{NAME}:Issued does not come back equal from its JSON" in str(first.value)
    for _ in range(2):
        with pytest.raises(OutcomeError, match="could not be serialized"):
            issue("o-1")
    assert runs == ["o-1"]


def test_b39_a_model_stored_by_field_name_by_the_previous_release_replays(
    store: Store, clock: ManualClock
) -> None:
    """A model with aliases stored by the previous release (by field name, which validation
    refused) replays equal, on pydantic 2.11 and later."""
    runs: list[str] = []
    charge = _charging(store, runs)

    first = charge("o-1")
    (record,) = store.list_records(namespace="pydantic.charge")
    clock.advance(86_400 + 1)  # past retention: the record is taken over and rewritten
    claim = store.claim(record.identity, record.fingerprint, lease=30, retention=86_400)
    assert claim.acquired
    by_name = json.dumps({"order_id": "o-1", "amount": 500}, separators=(",", ":"))
    previous = json.dumps({"$rs": "pydantic", "v": [f"{NAME}:Charge", by_name]}).encode()
    store.complete(record.identity, claim.token, b"R" + previous, retention=86_400)

    assert charge("o-1") == first
    assert runs == ["o-1"]


CALL_IN_A_PROCESS = """
import sys
import pydantic
import retrysafe

class Order(pydantic.BaseModel):
    id: str
    tags: set[str]

store = retrysafe.open_store(sys.argv[1])

@retrysafe.idempotent(store, key=lambda order: order.id, namespace="pydantic.order")
def charge(order: Order) -> str:
    print("ran")
    return "charged"

try:
    print(charge(Order(id="o-1", tags={"gift", "express", "fragile", "priority", "insured"})))
except retrysafe.IdempotencyError as error:
    print(type(error).__name__)
"""


def test_b26_a_model_with_a_set_has_one_fingerprint_in_every_process(tmp_path: Path) -> None:
    """A model argument with a `set[str]` field is the same call from processes whose string
    hashes (and so set order) differ: before, each retry raised KeyMismatchError."""
    script = tmp_path / "call.py"
    script.write_text(textwrap.dedent(CALL_IN_A_PROCESS))
    url = f"sqlite:///{tmp_path / 'store.db'}"
    printed = []
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, str(script), url], env=env, capture_output=True, text=True, check=True
        )
        printed.append(done.stdout.split())
    assert printed == [["ran", "charged"], ["charged"], ["charged"], ["charged"]]


def test_b39_model_fingerprints_are_pinned_and_unchanged_without_sets() -> None:
    """A model with a set of two items or more is encoded canonically (items sorted, under its
    own tag; a URL in pydantic's JSON form); one without (or whose sets have one order only)
    keeps the previous release's encoding, so a retry that straddles the upgrade matches."""
    assert canonical_bytes(Tagged(id="o-1", tags={"b", "a"})) == (
        b'{"$rs":"pydantic-canonical","v":["' + NAME.encode() + b':Tagged",'
        b'{"callback":null,"id":"o-1","tags":{"$rs":"set","v":["a","b"]}}]}'
    )
    with_url = Tagged(id="o-1", tags={"b", "a"}, callback="https://example.com/done")
    assert canonical_bytes(with_url) == (
        b'{"$rs":"pydantic-canonical","v":["' + NAME.encode() + b':Tagged",'
        b'{"callback":"https://example.com/done","id":"o-1",'
        b'"tags":{"$rs":"set","v":["a","b"]}}]}'
    )
    assert (
        canonical_bytes(Tagged(id="o-1", tags={"a"}))
        == (  # in one order only
            b'{"$rs":"pydantic","v":["' + NAME.encode() + b':Tagged",'
            b'"{\\"id\\":\\"o-1\\",\\"tags\\":[\\"a\\"],\\"callback\\":null}"]}'
        )
    )
    assert canonical_bytes({"order": Plain(id="o-1", amount=5)}) == (
        b'{"order":{"$rs":"pydantic","v":["' + NAME.encode() + b':Plain",'
        b'"{\\"id\\":\\"o-1\\",\\"amount\\":5}"]}}'
    )
