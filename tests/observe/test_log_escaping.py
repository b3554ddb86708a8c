"""SPEC B35 in the decisions log: a key a client chose cannot forge a log line nor steer the
terminal that shows the log; the record's fields keep the exact key."""

from __future__ import annotations

import logging

import pytest

import retrysafe

FORGED = "o-1\n2026-01-01 INFO payments: refund approved\x1b[2J\u202e"


def test_b35_a_key_with_a_line_feed_and_controls_is_escaped_in_the_decision_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The decision's message is one line, the key's LF, ESC and bidi override written as
    escapes; `idempotency_key` is the key as it was sent, for a JSON formatter."""
    store = retrysafe.open_store("memory://")

    @retrysafe.idempotent(store, key="order", namespace="orders\r.pay")
    def pay(order: str) -> int:
        return 1

    with caplog.at_level(logging.DEBUG, logger="retrysafe.decisions"):
        pay(FORGED)
    (record,) = [r for r in caplog.records if r.name == "retrysafe.decisions"]
    message = record.getMessage()
    assert message.isprintable()
    assert message.startswith(
        "decorator orders\\r.pay/o-1\\n2026-01-01 INFO payments: refund approved\\x1b[2J"
        "\\u202e: execute, stored in "
    )
    assert record.__dict__["idempotency_key"] == FORGED
    assert record.__dict__["namespace"] == "orders\r.pay"
