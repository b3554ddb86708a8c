"""The decorator on callables that are not plain functions: objects with an async `__call__`,
static and class methods in either decorator order, partials, and a sync `def` that returns a
coroutine (B26)."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from retrysafe import AsyncStore, ConfigurationError, Store
from retrysafe._decorator import idempotent


class Charger:
    """A handler object, as dependency injection frameworks and consumers build them."""

    def __init__(self) -> None:
        self.charged: list[str] = []

    async def __call__(self, order_id: str) -> str:
        self.charged.append(order_id)
        return f"r-{len(self.charged)}"


@pytest.mark.anyio
async def test_b26_an_object_with_an_async_call_runs_once_on_an_async_store(
    astore: AsyncStore,
) -> None:
    """An object whose `__call__` is async is an async function: it runs once and replays."""
    charger = Charger()
    charge = idempotent(astore, key="order_id", namespace="billing.charge")(charger)
    assert [await charge("o-1"), await charge("o-1"), await charge(order_id="o-1")] == ["r-1"] * 3
    assert charger.charged == ["o-1"]


@pytest.mark.anyio
async def test_b26_an_object_with_an_async_call_is_refused_at_decoration(
    store: Store, astore: AsyncStore
) -> None:
    """A sync store for an async `__call__`, or no namespace for an object, is a
    ConfigurationError at decoration that names the object, never a call that cannot run."""
    with pytest.raises(ConfigurationError, match=r"Charger object .* is async, .*async store"):
        idempotent(store, key="order_id", namespace="billing.charge")(Charger())
    with pytest.raises(ConfigurationError, match=r"Charger object .* pass namespace="):
        idempotent(astore, key="order_id")(Charger())
    with pytest.raises(ConfigurationError, match=r"key='nope': .*Charger object .* no such"):
        idempotent(astore, key="nope", namespace="billing.charge")(Charger())


def test_b26_a_bad_argument_name_of_a_partial_is_a_configuration_error(store: Store) -> None:
    """A partial has no qualified name: the error names it by its repr, not AttributeError."""

    def charge(amount: int, order_id: str) -> int:
        return amount

    with pytest.raises(ConfigurationError, match=r"key='nope': functools\.partial\(.*no such"):
        idempotent(store, key="nope", namespace="billing.charge")(functools.partial(charge, 5))


def test_b26_idempotent_above_or_below_staticmethod_and_classmethod(store: Store) -> None:
    """@idempotent over a staticmethod or classmethod object decorates its function, so either
    order runs once per key, called through the class or through an instance."""
    runs: list[tuple[str, str]] = []

    class Billing:
        @idempotent(store, key="order_id", namespace="billing.static_above")
        @staticmethod
        def static_above(order_id: str) -> str:
            runs.append(("static_above", order_id))
            return "s"

        @staticmethod
        @idempotent(store, key="order_id", namespace="billing.static_below")
        def static_below(order_id: str) -> str:
            runs.append(("static_below", order_id))
            return "s"

        @idempotent(store, key="order_id", namespace="billing.class_above")
        @classmethod
        def class_above(cls, order_id: str) -> str:
            runs.append(("class_above", order_id))
            return cls.__name__

    for call in (Billing.static_above, Billing().static_above):
        assert call("o-1") == "s"
    for call in (Billing.static_below, Billing().static_below):
        assert call("o-1") == "s"
    for call in (Billing.class_above, Billing().class_above):
        assert call("o-1") == "Billing"
    assert runs == [("static_above", "o-1"), ("static_below", "o-1"), ("class_above", "o-1")]


@pytest.mark.anyio
async def test_b26_an_async_staticmethod_under_idempotent_takes_an_async_store(
    store: Store, astore: AsyncStore
) -> None:
    """An async static method under @idempotent is async: a sync store is refused at
    decoration; an async store runs it once."""
    runs: list[str] = []

    async def work(order_id: str) -> str:
        runs.append(order_id)
        return "r-1"

    with pytest.raises(ConfigurationError, match=r"work is async, .*async store"):
        idempotent(store, key="order_id", namespace="billing.charge")(staticmethod(work))

    class Billing:
        @idempotent(astore, key="order_id", namespace="billing.charge")
        @staticmethod
        async def charge(order_id: str) -> str:
            return await work(order_id)

    assert [await Billing.charge("o-1"), await Billing().charge("o-1")] == ["r-1", "r-1"]
    assert runs == ["o-1"]


def test_b26_a_sync_def_returning_a_coroutine_releases_its_key(store: Store) -> None:
    """A sync `def` that returns a coroutine raises ConfigurationError and releases its key:
    the coroutine is closed unrun (no 'never awaited' warning), nothing is stored, and a
    fixed function under the same namespace then runs with that key."""
    started: list[str] = []

    async def work(order_id: str) -> str:
        started.append(order_id)
        return "r-1"

    @idempotent(store, key="order_id", namespace="billing.charge")
    def charge(order_id: str) -> Any:
        return work(order_id)

    for _ in range(2):  # the second finds the key free again: refused the same way
        with pytest.raises(ConfigurationError, match=r"returned an awaitable.*released"):
            charge("o-1")

    @idempotent(store, key="order_id", namespace="billing.charge")
    def fixed(order_id: str) -> str:
        started.append(f"fixed {order_id}")
        return "r-2"

    assert fixed("o-1") == "r-2"
    assert started == ["fixed o-1"]
