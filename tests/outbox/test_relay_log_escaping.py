"""The relay's log lines write a publisher's error with its control characters escaped (B35):
an error that echoes a topic with a terminal escape and a line feed cannot steer a terminal
nor forge a log line. A real SQLite outbox, a publisher that refuses a topic."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Final

import pytest

from retrysafe import Identity, transactions
from retrysafe.outbox import OutboxMessage, Relay

HOSTILE: Final = "\x1b]0;PWN\x07\x1b[2J"
TRIES: Final = 5  # batches at most: every loop is bounded


def _commit(path: Path, *topics: str) -> None:
    with (
        contextlib.closing(sqlite3.connect(path)) as conn,
        transactions.sqlite(conn, identity=Identity("orders", "t", "o-1"), fingerprint="f") as tx,
    ):
        for topic in topics:
            tx.outbox.add(topic, b"{}")
        tx.complete(b"done")


def _refused(message: OutboxMessage) -> None:
    if HOSTILE in message.topic:
        raise LookupError(f"no queue takes {message.topic}\nFAKE LOG LINE")


def _assert_escaped(record: logging.LogRecord) -> None:
    text = record.getMessage()
    assert "\n" not in text
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "no queue takes orders.\\x1b]0;PWN\\x07\\x1b[2J\\nFAKE LOG LINE" in text


def test_b29_b35_a_parked_messages_last_error_is_logged_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The ERROR line of a parked message: its last error, with controls, escaped."""
    path = tmp_path / "app.db"
    _commit(path, "orders." + HOSTILE, "ok")
    caplog.set_level(logging.ERROR, "retrysafe")
    with Relay(f"sqlite:///{path}", _refused, max_attempts=2) as relay:
        for _ in range(TRIES):
            if relay.parked:
                break
            with contextlib.suppress(LookupError):
                relay.run_once()
        assert relay.parked == 1
    [logged] = [r for r in caplog.records if r.name == "retrysafe" and "parked" in r.msg]
    _assert_escaped(logged)


def test_b29_b35_a_failed_batch_is_logged_escaped_by_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`run`'s WARNING about a failed batch: the publisher's error, escaped."""
    path = tmp_path / "app.db"
    _commit(path, "orders." + HOSTILE)
    caplog.set_level(logging.WARNING, "retrysafe")
    with Relay(f"sqlite:///{path}", _refused) as relay:

        def refuse_then_stop(message: OutboxMessage) -> None:
            relay.stop()  # `run` returns once this batch failed and was logged
            _refused(message)

        relay.publisher = refuse_then_stop
        relay.run()
    [logged] = [r for r in caplog.records if r.msg.startswith("The outbox relay failed")]
    _assert_escaped(logged)
