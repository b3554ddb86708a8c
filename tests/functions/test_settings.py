"""The decorator's settings: typing, keys, fingerprints, namespaces and configuration errors."""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Iterator

import pytest

from retrysafe import (
    ConfigurationError,
    Identity,
    InvalidKeyError,
    KeyMismatchError,
    OutcomeError,
    Store,
    open_async_store,
    open_store,
)
from retrysafe._decorator import idempotent
from tests.functions.values import CardDeclinedError


@pytest.fixture
def memory() -> Iterator[Store]:
    """A fresh in-memory store."""
    store = open_store("memory://")
    yield store
    store.close()


def test_b26_sync_function_with_async_store_is_refused() -> None:
    """Decorating a sync function with an async store fails at decoration time."""
    with pytest.raises(ConfigurationError, match="needs a sync store"):

        @idempotent(open_async_store("memory://"), key="k")
        def handler(k: str) -> None: ...


def test_b26_async_function_with_sync_store_is_refused(memory: Store) -> None:
    """Decorating an async function with a sync store fails at decoration time."""
    with pytest.raises(ConfigurationError, match="needs an async store"):

        @idempotent(memory, key="k")
        async def handler(k: str) -> None: ...


@pytest.mark.parametrize(
    "settings",
    [
        {"key": "missing"},
        {"key": "k", "fingerprint": ["missing"]},
        {"key": "k", "lease": 0},
        {"key": "k", "retention": -1},
        {"key": "k", "wait": -1},
        {"key": "k", "lease": float("nan")},
        {"key": "k", "lease": float("inf")},
        {"key": "k", "retention": float("nan")},
        {"key": "k", "retention": float("inf")},
        {"key": "k", "wait": float("inf")},
        {"key": "k", "wait": float("nan")},
        {"key": "k", "namespace": ""},
        {"key": "k", "final_exceptions": (int,)},
    ],
)
def test_bad_settings_are_configuration_errors(memory: Store, settings: dict[str, object]) -> None:
    """Unknown argument names and impossible numbers are refused when decorating."""
    with pytest.raises(ConfigurationError):

        @idempotent(memory, **settings)  # type: ignore[arg-type]
        def handler(k: str) -> None: ...


def test_generators_are_refused(memory: Store) -> None:
    """A generator's values cannot be replayed, so decorating one is refused."""
    with pytest.raises(ConfigurationError, match="generator"):

        @idempotent(memory, key="k")
        def handler(k: str) -> Iterator[int]:
            yield 1


def test_b26_decorated_function_keeps_its_signature(memory: Store) -> None:
    """The wrapper keeps the function's name, docstring and signature."""

    def charge(order_id: str, amount: int = 1) -> int:
        """Charge an order."""
        return amount

    wrapped = idempotent(memory, key="order_id")(charge)
    assert wrapped.__name__ == "charge"
    assert wrapped.__doc__ == "Charge an order."
    assert inspect.signature(wrapped) == inspect.signature(charge)


def test_b26_key_from_a_callable_and_default_arguments(memory: Store) -> None:
    """A key callable gets the call's arguments; defaults count in the fingerprint."""
    runs: list[int] = []

    @idempotent(memory, key=lambda order, amount=1: order["id"])
    def charge(order: dict[str, str], amount: int = 1) -> int:
        runs.append(amount)
        return amount

    assert charge({"id": "o-1"}) == 1
    assert charge({"id": "o-1"}, amount=1) == 1
    assert charge(order={"id": "o-1"}) == 1
    with pytest.raises(KeyMismatchError):
        charge({"id": "o-1"}, 2)
    assert runs == [1]


def test_b26_every_form_of_a_call_is_the_same_call(memory: Store) -> None:
    """By position, by keyword, or leaving a default out: one call, one run, one fingerprint;
    a call that does not fit the signature raises TypeError and claims nothing."""
    runs: list[int] = []

    @idempotent(memory, key="order_id")
    def charge(order_id: str, amount: int = 1, /, *, note: str = "") -> int:
        runs.append(amount)
        return amount

    @idempotent(memory, key="order_id")
    def refund(order_id: str, amount: int = 1) -> int:
        runs.append(-amount)
        return -amount

    assert charge("o-1", 1) == 1
    assert charge("o-1") == 1
    assert charge("o-1", 1, note="") == 1
    assert refund("o-2", 1) == -1  # every argument by position: bound without `bind`
    assert refund("o-2") == -1
    assert refund(order_id="o-2", amount=1) == -1
    assert refund("o-2", amount=1) == -1
    with pytest.raises(KeyMismatchError):
        refund("o-2", 2)
    with pytest.raises(TypeError):
        refund("o-3", 1, 2)  # type: ignore[call-arg]
    assert runs == [1, -1]
    assert memory.stats().in_flight == 0
    assert memory.get(Identity(f"{__name__}.{refund.__qualname__}", "", "o-3")) is None


def test_b26_int_and_uuid_keys_but_not_none(memory: Store) -> None:
    """Keys may be str, int or UUID; a None key raises InvalidKeyError and stores nothing."""

    @idempotent(memory, key="key")
    def echo(key: object) -> str:
        return str(key)

    assert echo(7) == "7"
    assert echo(uuid.UUID(int=1)) == str(uuid.UUID(int=1))
    for bad in (None, "", True, 1.5):
        with pytest.raises(InvalidKeyError):
            echo(bad)
    assert memory.stats().in_flight == 0


def test_b26_fingerprint_subset(memory: Store) -> None:
    """Only the chosen arguments make the fingerprint: others may change without a mismatch."""
    runs: list[str] = []

    @idempotent(memory, key="order_id", fingerprint=["order_id", "amount"])
    def charge(order_id: str, amount: int, trace_id: str) -> int:
        runs.append(trace_id)
        return amount

    assert charge("o-1", 5, "trace-a") == 5
    assert charge("o-1", 5, "trace-b") == 5
    with pytest.raises(KeyMismatchError):
        charge("o-1", 6, "trace-c")
    assert runs == ["trace-a"]


def test_b26_unfingerprintable_argument_asks_for_a_subset(memory: Store) -> None:
    """An argument that cannot be fingerprinted is a ConfigurationError naming the fix."""

    @idempotent(memory, key="key")
    def handler(key: str, connection: object) -> None: ...

    with pytest.raises(ConfigurationError, match="fingerprint="):
        handler("k", object())


def test_namespace_defaults_to_qualified_name_and_can_be_kept(memory: Store) -> None:
    """Two functions have separate keys by default; one namespace survives a rename."""

    @idempotent(memory, key="k")
    def old_name(k: str) -> str:
        return "old"

    @idempotent(memory, key="k")
    def other(k: str) -> str:
        return "other"

    assert old_name("k") == "old"
    assert other("k") == "other"

    namespace = f"{__name__}.renamed"

    @idempotent(memory, key="k", namespace=namespace)
    def before(k: str) -> str:
        return "before"

    @idempotent(memory, key="k", namespace=namespace)
    def after(k: str) -> str:
        return "after"

    assert before("k") == "before"
    assert after("k") == "before"
    [record] = memory.list_records(namespace=namespace)
    assert record.identity.key == "k"


def test_a_lambda_or_a_nameless_callable_needs_a_namespace(memory: Store) -> None:
    """Every lambda of a module would get the default namespace `module.<lambda>`, and one
    lambda would replay another's outcome for the same key; a `functools.partial` or a
    callable object has no qualified name at all. Both ask for `namespace=` at decoration,
    and work with one."""
    with pytest.raises(ConfigurationError, match="every lambda"):
        idempotent(memory, key=lambda k: k)(lambda k: f"charged {k}")
    with pytest.raises(ConfigurationError, match="pass namespace"):
        idempotent(memory, key="k")(functools.partial(lambda k, amount: amount, amount=5))
    charge = idempotent(memory, key=lambda k: k, namespace="billing.charge")(lambda k: f"c {k}")
    refund = idempotent(memory, key=lambda k: k, namespace="billing.refund")(lambda k: f"r {k}")
    assert (charge("o-1"), refund("o-1")) == ("c o-1", "r o-1")


def test_methods_leave_self_out_of_the_fingerprint(memory: Store) -> None:
    """On a method, the instance is not part of the fingerprint: two instances share keys."""

    class Service:
        def __init__(self) -> None:
            self.runs = 0

        @idempotent(memory, key="order_id")
        def charge(self, order_id: str) -> str:
            self.runs += 1
            return order_id

    first, second = Service(), Service()
    assert first.charge("o-1") == "o-1"
    assert second.charge("o-1") == "o-1"
    assert (first.runs, second.runs) == (1, 0)


def test_b28_final_exception_that_is_no_longer_final_replays_as_outcome_error(
    memory: Store,
) -> None:
    """A stored exception whose type is no longer final here replays as OutcomeError."""

    @idempotent(memory, key="k", namespace="ns", final_exceptions=(CardDeclinedError,))
    def first(k: str) -> None:
        raise CardDeclinedError(k, "no")

    @idempotent(memory, key="k", namespace="ns")
    def second(k: str) -> None: ...

    with pytest.raises(CardDeclinedError):
        first("k")
    with pytest.raises(OutcomeError, match="CardDeclinedError"):
        second("k")
