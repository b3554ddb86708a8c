"""The serializer: replays equal to the first result and of the same type (B27)."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest

from retrysafe import OutcomeError, Store, open_store
from retrysafe._decorator import idempotent
from retrysafe._fingerprint import digest
from retrysafe._serializer import JSONSerializer, Serializer, canonical_bytes
from tests.functions.values import RICH, Box, Payment, Receipt


@pytest.mark.parametrize("value", RICH, ids=lambda v: type(v).__name__)
def test_b27_json_serializer_round_trips_equal_and_same_type(value: object) -> None:
    """Every supported type comes back equal to the original and of the same class."""
    serializer = JSONSerializer()
    back = serializer.loads(serializer.dumps(value))
    assert back == value
    assert type(back) is type(value)


def test_b27_nested_types_survive() -> None:
    """Types nested in containers and dataclasses survive too, not only the outer one."""
    serializer = JSONSerializer()
    box = next(v for v in RICH if isinstance(v, Box))
    back = serializer.loads(serializer.dumps(box))
    assert isinstance(back, Box)
    assert isinstance(back.receipt, Receipt)
    assert type(back.tags) is set
    assert list(back.by_id) == [1]
    payment = next(v for v in RICH if isinstance(v, Payment))
    assert isinstance(serializer.loads(serializer.dumps(payment)), Payment)


def test_b27_stored_json_is_readable() -> None:
    """JSON's own values are stored as plain JSON, readable by an operator."""
    assert JSONSerializer().dumps({"id": 1, "ok": True, "items": [None]}) == (
        b'{"id":1,"ok":true,"items":[null]}'
    )


def test_unsupported_values_raise_type_error() -> None:
    """A value of an unsupported type is refused with TypeError naming the type."""
    with pytest.raises(TypeError, match="object"):
        JSONSerializer().dumps(object())


def test_b12_canonical_bytes_ignore_dict_and_set_order() -> None:
    """Fingerprint bytes do not depend on dict insertion order or set order."""
    assert canonical_bytes({"a": 1, "b": {2, 1}}) == canonical_bytes({"b": {1, 2}, "a": 1})
    assert canonical_bytes({1: "x", 2: "y"}) == canonical_bytes({2: "y", 1: "x"})
    assert canonical_bytes([1, 2]) != canonical_bytes((1, 2))


def test_b12_canonical_bytes_are_pinned_across_versions() -> None:
    """The fingerprint encoding never changes: a retry across an upgrade still matches."""
    value = {
        "order": {"id": "o-1", "amount": 5, "tags": ("a", "b"), "when": dt.date(2024, 5, 1)},
        "note": None,
        "ids": {3, 1, 2},
        "by": {1: "x"},
    }
    assert canonical_bytes(value) == (
        b'{"by":{"$rs":"dict","v":[[1,"x"]]},"ids":{"$rs":"set","v":[1,2,3]},"note":null,'
        b'"order":{"amount":5,"id":"o-1","tags":{"$rs":"tuple","v":["a","b"]},'
        b'"when":{"$rs":"date","v":"2024-05-01"}}}'
    )
    assert digest((canonical_bytes(value),)) == (
        "4aaac1a46b6406b6796585c2616231e58024d57be7340140251557ef2401db15"
    )


def test_b27_unserializable_result_is_stored_and_not_run_again(store: Store) -> None:
    """A result that cannot be serialized raises OutcomeError now and on every retry, unrun."""
    runs: list[int] = []

    @idempotent(store, key="key")
    def make(key: str) -> object:
        runs.append(1)
        return object()

    with pytest.raises(OutcomeError, match="cannot be serialized") as first:
        make("k")
    message = str(first.value)  # one sentence ends where the serializer's message ends
    assert "(of type object)" in message
    assert ".." not in message
    for _ in range(2):
        with pytest.raises(OutcomeError, match="could not be serialized"):
            make("k")
    assert runs == [1]


class PickleSerializer:
    """A custom serializer for values JSON cannot hold (trusted stores only)."""

    def dumps(self, value: object) -> bytes:
        """Pickle the value."""
        return pickle.dumps(value)

    def loads(self, data: bytes) -> object:
        """Unpickle the value."""
        return pickle.loads(data)  # noqa: S301 - the test's own data


class Opaque:
    """A class JSON cannot hold but pickle can."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.n == self.n

    def __hash__(self) -> int:
        return self.n


def test_b27_custom_serializer_is_pluggable() -> None:
    """A Serializer passed to the decorator stores and replays what JSON cannot."""
    assert isinstance(PickleSerializer(), Serializer)
    store = open_store("memory://")
    runs: list[int] = []

    @idempotent(store, key="n", serializer=PickleSerializer())
    def build(n: int) -> Opaque:
        runs.append(n)
        return Opaque(n)

    assert build(3) == Opaque(3)
    assert build(3) == Opaque(3)
    assert runs == [3]
