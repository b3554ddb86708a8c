"""Structured logs (`retrysafe.observe`): one record per decision on `retrysafe.decisions` at
DEBUG, and failures at WARNING or above, each with its fields as `extra`."""

from __future__ import annotations

import logging

import pytest

import retrysafe
from retrysafe import FencedError, ManualClock
from retrysafe._record import Identity
from retrysafe.observe import scope_digest
from retrysafe.stores.memory import MemoryStore


def field(record: logging.LogRecord, name: str) -> object:
    """Return a field the record was given as `extra`."""
    return record.__dict__[name]


def test_b26_each_decision_is_one_debug_record_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An execution and a replay of a decorated call: two records, fields as attributes."""
    store = retrysafe.open_store("memory://")

    @retrysafe.idempotent(store, key="order", scope="tenant-7", namespace="orders.pay")
    def pay(order: str) -> int:
        return 1

    with caplog.at_level(logging.DEBUG, logger="retrysafe.decisions"):
        pay("o-1")
        pay("o-1")
    records = [r for r in caplog.records if r.name == "retrysafe.decisions"]
    assert [r.levelno for r in records] == [logging.DEBUG, logging.DEBUG]
    assert [field(r, "decision") for r in records] == ["execute", "replay"]
    assert [field(r, "result") for r in records] == ["stored", None]
    for record in records:
        assert field(record, "face") == "decorator"
        assert field(record, "namespace") == "orders.pay"
        assert field(record, "idempotency_key") == "o-1"
        assert field(record, "scope") == scope_digest("tenant-7") != "tenant-7"
        assert isinstance(field(record, "duration_ms"), float)
        assert "o-1" in record.getMessage()


def test_b26_no_records_when_the_decisions_logger_is_off(caplog: pytest.LogCaptureFixture) -> None:
    """At INFO, the decisions logger says nothing."""
    store = retrysafe.open_store("memory://")

    @retrysafe.idempotent(store, key="order")
    def pay(order: str) -> int:
        return 1

    with caplog.at_level(logging.INFO, logger="retrysafe"):
        pay("o-2")
    assert [r for r in caplog.records if r.name == "retrysafe.decisions"] == []


def test_b17_a_fencing_is_a_warning_or_above_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A completion fenced by a takeover (the lease ended while the call ran, and another
    worker claimed the key) is logged at ERROR with the key's fields, and the decision record
    says `fenced`."""
    clock = ManualClock()
    store = MemoryStore(clock=clock)

    @retrysafe.idempotent(store, key="order", scope="tenant-8", namespace="pay", lease=5)
    def pay(order: str) -> int:
        clock.advance(6)  # the lease is over: another worker takes the key
        identity = Identity("pay", "tenant-8", order)
        running = store.get(identity)
        assert running is not None
        taken = store.claim(identity, running.fingerprint, lease=5, retention=60)
        assert taken.acquired
        return 1

    with caplog.at_level(logging.DEBUG, logger="retrysafe"), pytest.raises(FencedError):
        pay("o-3")
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # The lapse is told first (B16: the lease went unrenewed past its end), then the fencing.
    assert [field(r, "retrysafe_event") for r in failures] == ["lease_lapsed", "fenced"]
    for failure in failures:
        assert field(failure, "idempotency_key") == "o-3"
        assert field(failure, "face") == "decorator"
        assert field(failure, "scope") == scope_digest("tenant-8")
    assert failures[1].levelno == logging.ERROR
    (decision,) = [r for r in caplog.records if r.name == "retrysafe.decisions"]
    assert (field(decision, "decision"), field(decision, "result")) == ("execute", "fenced")
