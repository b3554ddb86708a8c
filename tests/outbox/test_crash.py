"""Crash tests: the app and the relay killed with SIGKILL, then every message applied once.

Each run is a fresh `python -m tests.outbox.worker` process. The test kills it with SIGKILL
when it reports the chosen point: inside the transaction after the messages were added, after
the commit before any relay ran, and in the relay after the broker confirmed a message but
before the relay marked it published. After recovery a real RabbitMQ consumer applies every
delivery through `idempotent_message` on a store: each committed message is applied exactly
once, although the killed relays made the broker deliver some twice, and nothing is published
for a transaction that rolled back.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrysafe import Identity, open_store
from retrysafe.consumers import idempotent_message
from retrysafe.outbox import OutboxMessage, Relay, outbox_table
from tests.conftest import unique_name
from tests.outbox.test_outbox import derived_ids
from tests.transactions.conftest import Database, make_database

pytestmark = pytest.mark.rabbitmq

ROOT = Path(__file__).resolve().parents[2]
WORKER_SECONDS = 60.0


def run_worker(args: list[str], crash_at: str = "") -> tuple[str | None, dict[str, Any] | None]:
    """Run the worker once; SIGKILL it when it reports `crash_at`. Return (point, outcome)."""
    command = [sys.executable, "-m", "tests.outbox.worker", *args, "--crash-at", crash_at]
    with subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        watchdog = threading.Timer(WORKER_SECONDS, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            assert process.stderr is not None
            for line in process.stdout:
                if line.startswith("at:"):
                    os.kill(process.pid, signal.SIGKILL)
                    assert process.wait(10) == -signal.SIGKILL
                    return line[3:].strip(), None
                if line.startswith("outcome:"):
                    assert process.wait(10) == 0
                    return None, json.loads(line.removeprefix("outcome:"))
            code = process.wait(10)
            return f"exit:{code}", {"stderr": process.stderr.read()}
        finally:
            watchdog.cancel()


@contextlib.contextmanager
def amqp_queue(url: str) -> Iterator[tuple[Any, str]]:
    """Declare a queue of this test's own (its name is the messages' topic); delete it after."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    name = unique_name("rs_outbox")
    channel.queue_declare(name)
    try:
        yield channel, name
    finally:
        channel.queue_delete(name)
        connection.close()


def drain(channel: Any, queue: str) -> list[tuple[Any, bytes]]:
    """Take every message waiting in `queue` (a bounded number of gets), acknowledged."""
    taken: list[tuple[Any, bytes]] = []
    for _ in range(1000):
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return taken
        taken.append((properties, body))
    raise AssertionError("the queue never ran dry")


def outbox_rows(database: Database) -> list[tuple[Any, ...]]:
    """Return (message_id, published_at) of every outbox row, in id order."""
    table = outbox_table(database.table)
    return database.execute(f'SELECT message_id, published_at FROM "{table}" ORDER BY id')  # noqa: S608


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_killed_app_and_relay_still_apply_every_message_exactly_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, amqp_url: str
) -> None:
    """SIGKILL before and after the commit, and in the relay between publish and mark: after
    recovery each committed message is applied once; a rolled-back one is never published."""
    with make_database(kind, request, tmp_path) as database, amqp_queue(amqp_url) as (channel, q):
        database.extra_tables.append(outbox_table(database.table))
        orders = database.create_table("rs_orders", "key TEXT PRIMARY KEY")
        base = ["--db", kind, "--dsn", database.dsn, "--table", database.table]
        app = ["app", *base, "--orders", orders, "--topic", q]
        with Relay(database.url, refuse) as empty:  # creates the outbox table, publishes none
            assert empty.run_once() == 0

        # Killed inside the transaction, messages added: nothing committed; the retry commits.
        assert run_worker([*app, "--key", "a"], "before_commit")[0] == "before_commit"
        assert outbox_rows(database) == []
        assert database.execute(f"SELECT key FROM {orders}") == []  # noqa: S608
        assert run_worker([*app, "--key", "a"])[1] == {
            "replay": False,
            "ids": ids_of(database, "a"),
        }
        # Killed after the commit, before any relay: committed; the client's retry replays.
        assert run_worker([*app, "--key", "b"], "after_commit")[0] == "after_commit"
        assert run_worker([*app, "--key", "b"])[1] == {"replay": True, "ids": []}
        # A transaction that rolls back writes no message.
        point, _ = run_worker([*app, "--key", "c", "--fail"])
        assert point == "exit:1"
        expected = ids_of(database, "a") + ids_of(database, "b")
        assert [row[0] for row in outbox_rows(database)] == expected

        relay = ["relay", *base, "--amqp", amqp_url, "--batch", "2"]
        # Killed after the broker confirmed a message, before it was marked: published again.
        assert run_worker(relay, "published:1")[0] == "published:1"
        assert run_worker(relay, "published:3")[0] == "published:3"
        assert run_worker(relay)[1] is not None
        assert all(published is not None for _, published in outbox_rows(database))

        deliveries = drain(channel, q)
        assert len(deliveries) > len(expected)  # the killed relays' messages came twice
        applied = consume(deliveries, tmp_path / "consumer.db")
        assert sorted(applied) == sorted(expected)  # each once, none for the rollback
        assert {json.loads(body)["order"] for _, body in deliveries} == {"a", "b"}


def refuse(message: OutboxMessage) -> None:
    """A publisher for a relay that must find nothing to publish."""
    raise AssertionError(f"published {message}")


def ids_of(database: Database, key: str) -> list[str]:
    """Return the message ids the worker's order `key` derived (from its stored record)."""
    return derived_ids(database, Identity("orders", "tenant-a", key))


def consume(deliveries: list[tuple[Any, bytes]], store_path: Path) -> list[str]:
    """Apply each delivery through `idempotent_message`; return the ids whose effect ran."""
    applied: list[str] = []
    store = open_store(f"sqlite:///{store_path}")
    try:

        @idempotent_message(store, namespace="orders.shipped")
        def ship(properties: Any, body: bytes) -> None:
            applied.append(properties.message_id)

        for properties, body in deliveries:
            ship(properties, body)
    finally:
        store.close()
    return applied
