"""`retrysafe outbox-relay`: publishes a store's committed messages to a real RabbitMQ."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrysafe import Identity, open_store, transactions
from retrysafe.cli import app
from retrysafe.outbox import OutboxMessage, Relay, message_id
from tests.outbox.test_crash import amqp_queue, drain
from tests.outbox.test_outbox import database_of
from tests.outbox.test_parking import commit, refusing, relay_until

pytestmark = pytest.mark.rabbitmq


def test_outbox_relay_once_publishes_with_the_derived_ids(tmp_path: Path, amqp_url: str) -> None:
    """`--once` publishes what is waiting to the queue named by the topic, each message with
    its derived `message_id`, then exits 0; a second run publishes nothing."""
    path = tmp_path / "app.db"
    identity = Identity("orders", "t", "k")
    with amqp_queue(amqp_url) as (channel, queue):
        with (
            contextlib.closing(sqlite3.connect(path)) as conn,
            transactions.sqlite(conn, identity=identity, fingerprint="f") as tx,
        ):
            tx.outbox.add(queue, b'{"n": 0}', headers={"kind": "paid"})
            tx.complete(b"ok")
        command = ["outbox-relay", "--store", f"sqlite:///{path}", "--to", amqp_url, "--once"]
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
        assert "Published 1 messages" in result.output
        [(properties, body)] = drain(channel, queue)
        with contextlib.closing(open_store(f"sqlite:///{path}")) as store:
            record = store.get(identity)
        assert record is not None
        assert properties.message_id == message_id(record, 0)
        assert properties.headers == {"kind": "paid"}
        assert json.loads(body) == {"n": 0}
        again = CliRunner().invoke(app, command)
        assert "Published 0 messages" in again.output
        assert "guest:guest" not in again.output  # the URLs are printed without secrets


def test_outbox_relay_refuses_a_store_it_cannot_relay(tmp_path: Path) -> None:
    """A store URL of another kind is one line and exit 2, before any broker is contacted."""
    command = ["outbox-relay", "--store", "redis://localhost/0", "--to", "amqp://x/", "--once"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    assert "sqlite:// or postgresql://" in result.output


def test_outbox_relay_lists_and_requeues_parked_messages(
    request: pytest.FixtureRequest, tmp_path: Path, amqp_url: str
) -> None:
    """`--parked` lists what the relay parked, with its failed publishes and last error;
    `--requeue ID` puts it back in line, and `--once` then publishes it where it goes."""
    got: list[OutboxMessage] = []
    with database_of("sqlite", request, tmp_path) as database, amqp_queue(amqp_url) as queues:
        channel, queue = queues
        commit(database, "a", queue, "orders.paid")
        with Relay(database.url, refusing(queue, got), max_attempts=1) as relay:
            relay_until(relay, 1)
            [parked] = relay.parked_messages()
        store = ["--store", database.url, "--to", amqp_url, "--exchange", ""]
        listed = CliRunner().invoke(app, ["outbox-relay", *store, "--parked"])
        assert listed.exit_code == 0, listed.output
        assert parked.message_id in listed.output
        assert f"no route to {queue}" in listed.output
        assert "1 parked messages" in listed.output
        requeued = CliRunner().invoke(app, ["outbox-relay", *store, "--requeue", "all"])
        assert "Re-queued 1 messages" in requeued.output
        published = CliRunner().invoke(app, ["outbox-relay", *store, "--once"])
        assert "Published 1 messages" in published.output, published.output
        [(properties, body)] = drain(channel, queue)
        assert (properties.message_id, body) == (parked.message_id, b"a-0")
        after = CliRunner().invoke(app, ["outbox-relay", *store, "--parked"])
        assert "0 parked messages" in after.output


def test_b40_outbox_relay_hands_its_confirm_timeout_to_the_publisher(tmp_path: Path) -> None:
    """`--confirm-timeout` bounds each publish's confirm (B40): the value reaches the
    publisher, which refuses a bound of nothing in one line, exit 2, before any broker is
    contacted."""
    store = ["--store", f"sqlite:///{tmp_path / 'app.db'}", "--to", "amqp://x/", "--once"]
    result = CliRunner().invoke(app, ["outbox-relay", *store, "--confirm-timeout", "0s"])
    assert result.exit_code == 2
    assert "confirm_timeout > 0" in result.output
