"""Two completers and a late client retry racing on the same abandoned orders never run a
phase twice: the claim and fencing let exactly one of them hold each order at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from retrysafe import FencedError, Identity, InFlightError, State
from retrysafe.completer import Completer
from retrysafe.transactions import foreign_key
from tests.completer import orders
from tests.completer.conftest import Shop
from tests.transactions.worker import OffsetClock

ORDERS = 12
JOIN_SECONDS = 120.0


class AbandonedError(BaseException):
    """Stops a run as a vanished client does: no lease is released (not an Exception)."""


@contextmanager
def abandoning(at: Callable[[str], str]) -> Iterator[None]:
    """Make each order's run stop at the point `at(key)` names, as if its client died there."""

    def reach(point: str, key: str) -> None:
        if point == at(key):
            raise AbandonedError(point)

    orders.reach = reach
    try:
        yield
    finally:
        orders.reach = lambda point, key: None


def _identity(key: str) -> Identity:
    return Identity("orders", "tenant-a", key)


def test_b17_two_completers_and_a_late_client_retry_never_double_a_phase(shop: Shop) -> None:
    """Orders abandoned before and after their charge are raced by two completers and a
    client retrying every one of them: each order ends done, every phase committed once,
    the provider was called once per order, and every answer the client got is the outcome."""
    database, keys = shop.database, [f"order-{n}" for n in range(ORDERS)]
    requests = {key: orders.request_of(key, **shop.spec()) for key in keys}
    with abandoning(lambda key: "charge:start" if int(key[6:]) % 2 else "finish:start"):
        for key in keys:
            conn = database.connect()
            try:
                with pytest.raises(AbandonedError):
                    orders.registry.run(
                        conn,
                        _identity(key),
                        requests[key],
                        table=database.table,
                        clock=OffsetClock(-100),
                    )
            finally:
                conn.close()

    start, errors = threading.Event(), []
    answers: dict[str, bytes] = {}
    refused: list[str] = []
    completers = [
        Completer(orders.registry, connect=database.connect, table=database.table) for _ in range(2)
    ]

    def client() -> None:
        start.wait(JOIN_SECONDS)
        for key in keys:
            conn = database.connect()
            try:
                result = orders.registry.run(
                    conn, _identity(key), requests[key], table=database.table
                )
                answers[key] = result.outcome
            except (InFlightError, FencedError):
                refused.append(key)  # a completer holds it: the client would retry later
            finally:
                conn.close()

    def completer(instance: Completer) -> None:
        start.wait(JOIN_SECONDS)
        try:
            while instance.run_once().handled:
                pass
        except Exception as error:  # reported below, with the thread's failure
            errors.append(error)

    threads = [threading.Thread(target=client)]
    threads += [threading.Thread(target=completer, args=(c,)) for c in completers]
    for thread in threads:
        thread.start()
    start.set()
    for thread in threads:
        thread.join(JOIN_SECONDS)
        assert not thread.is_alive()
    assert errors == []

    assert shop.provider.created == ORDERS
    for key in keys:
        record = shop.record(key)
        assert record is not None
        assert record.state is State.DONE, key
        assert shop.provider.calls[foreign_key(record, "charge")] == 1, key
        assert shop.phases_logged(key) == ["charge", "finish", "reserve"], key
        if key in answers:
            assert answers[key] == record.outcome
    assert len(answers) + len(refused) == ORDERS
    assert shop.resumable_rows() == 0


def test_b17_an_order_a_client_finishes_while_the_completer_builds_it_counts_as_skipped(
    shop: Shop,
) -> None:
    """Between reading an abandoned order and claiming it, the completer builds its phases;
    a client's retry that finishes the order meanwhile leaves the completer a replay, which
    it reports as skipped, not as completed (it ran nothing)."""
    database, key = shop.database, "order-late"
    request = orders.request_of(key, **shop.spec())
    with abandoning(lambda _: "finish:start"):
        conn = database.connect()
        try:
            with pytest.raises(AbandonedError):
                orders.registry.run(
                    conn, _identity(key), request, table=database.table, clock=OffsetClock(-100)
                )
        finally:
            conn.close()
    finished: list[bytes] = []

    def client_finishes(point: str, _: str) -> None:
        if point == "build" and not finished:
            finished.append(b"")  # the client's own build comes through here too
            retry = database.connect()
            try:
                result = orders.registry.run(retry, _identity(key), request, table=database.table)
                finished[0] = result.outcome
            finally:
                retry.close()

    orders.reach = client_finishes
    try:
        done = Completer(orders.registry, connect=database.connect, table=database.table).run_once()
    finally:
        orders.reach = lambda point, key: None
    assert (done.completed, done.skipped, done.failed) == (0, 1, 0)
    record = shop.record(key)
    assert record is not None
    assert record.state is State.DONE
    assert finished == [record.outcome]
    assert shop.phases_logged(key) == ["charge", "finish", "reserve"]
