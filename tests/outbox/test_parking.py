"""A message the publisher always refuses is parked, so the messages after it go on; an outage
parks nothing; an operator lists parked messages and re-queues them; a table of an older
release gets the columns parking needs.

Real SQLite files and a real PostgreSQL server, a real RabbitMQ (`mandatory` publishes to a
queue that does not exist are returned, every time), or a publisher that refuses a topic.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from retrysafe import Identity, transactions
from retrysafe.outbox import AmqpPublisher, OutboxMessage, Relay, outbox_table
from retrysafe.outbox._batch import MOST_SUSPECTS
from tests.conftest import unique_name
from tests.outbox.test_crash import amqp_queue, drain
from tests.outbox.test_outbox import database_of
from tests.servers import refused_port
from tests.transactions.conftest import Database

KINDS = ["sqlite", "postgres"]
TRIES = 20  # the most relay batches a test runs: every loop is bounded


class RefusedError(Exception):
    """What the refusing publisher raises for its refused topic."""


def commit(database: Database, key: str, *topics: str) -> None:
    """Commit one operation of `key` that adds a message to each of `topics`, in order."""
    opener = transactions.sqlite if database.kind == "sqlite" else transactions.psycopg
    identity = Identity("orders", "t", key)
    with (
        contextlib.closing(database.connect()) as conn,
        opener(conn, identity=identity, fingerprint="f", table=database.table) as tx,
    ):
        for n, topic in enumerate(topics):
            tx.outbox.add(topic, f"{key}-{n}".encode())
        tx.complete(b"done")


def relay_until(relay: Relay, published: int) -> list[str]:
    """Run batches until `published` messages went in all; return each failed batch's error."""
    errors: list[str] = []
    for _ in range(TRIES):
        if relay.published >= published:
            return errors
        try:
            relay.run_once()
        except Exception as error:  # the relay's `run` would log it and wait
            errors.append(type(error).__name__)
    raise AssertionError(f"published {relay.published} of {published}; errors: {errors}")


def refusing(topic: str, got: list[OutboxMessage]) -> Any:
    """A publisher that records what it publishes and refuses every message to `topic`."""

    def publish(message: OutboxMessage) -> None:
        if message.topic == topic:
            raise RefusedError(f"no route to {topic}")
        got.append(message)

    return publish


@pytest.mark.rabbitmq
@pytest.mark.parametrize("kind", KINDS)
def test_b29_a_message_the_broker_always_refuses_is_parked_and_the_rest_go_on(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    amqp_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A `mandatory` message to a queue that does not exist fails `max_attempts` (5) times, is
    parked (logged at ERROR, listed with its last error) and the later messages reach their
    queue in order; once the queue exists, the re-queued message is published too."""
    caplog.set_level(logging.ERROR, "retrysafe")
    missing = unique_name("rs_outbox_missing")
    publisher = AmqpPublisher(amqp_url, mandatory=True)
    with (
        database_of(kind, request, tmp_path) as database,
        amqp_queue(amqp_url) as (channel, queue),
        Relay(database.url, publisher) as relay,
    ):
        commit(database, "o-1", missing)
        commit(database, "o-2", queue)
        commit(database, "o-3", queue)
        try:
            assert relay_until(relay, 2) == ["UnroutableError"] * 4  # the 5th passes it
            assert [body for _, body in drain(channel, queue)] == [b"o-2-0", b"o-3-0"]
            assert relay.parked == 1
            [parked] = relay.parked_messages()
            assert (parked.topic, parked.attempts) == (missing, 5)
            assert parked.last_error.startswith("UnroutableError")
            [logged] = [r for r in caplog.records if r.name == "retrysafe"]
            assert parked.message_id in logged.getMessage()
            assert relay.run_once() == 0  # parked: skipped, not tried again
            assert relay.parked_messages() == [parked]

            channel.queue_declare(missing)  # the operator fixes the route, and re-queues
            try:
                assert relay.requeue() == 1
                assert relay.run_once() == 1
                [(properties, body)] = drain(channel, missing)
            finally:
                channel.queue_delete(missing)
            assert (properties.message_id, body) == (parked.message_id, b"o-1-0")
            assert relay.parked_messages() == []
        finally:
            publisher.close()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("kind", KINDS)
def test_b29_a_broker_outage_parks_nothing_and_the_order_holds(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, amqp_url: str
) -> None:
    """While the broker refuses connections, every batch fails, each failure counted on its
    message, past `max_attempts`, and no message is parked; once the broker is back, every
    message is published in order."""
    down = AmqpPublisher(f"amqp://guest:guest@127.0.0.1:{refused_port()}/")
    up = AmqpPublisher(amqp_url)
    with (
        database_of(kind, request, tmp_path) as database,
        amqp_queue(amqp_url) as (channel, queue),
        Relay(database.url, down, max_attempts=2) as relay,
    ):
        for key in ("o-1", "o-2", "o-3"):
            commit(database, key, queue)
        for _ in range(6):
            with pytest.raises(ConnectionError, match="cannot be reached"):
                relay.run_once()
        table = outbox_table(database.table)
        attempts = database.execute(f'SELECT attempts FROM "{table}" ORDER BY id')  # noqa: S608
        # An outage stops every batch at its first message, suspect or not: one publish each.
        assert [row[0] for row in attempts] == [6, 0, 0]
        assert relay.parked == 0
        assert relay.parked_messages() == []
        relay.publisher = up
        try:
            assert relay.run_once() == 3
        finally:
            up.close()
        assert [body for _, body in drain(channel, queue)] == [b"o-1-0", b"o-2-0", b"o-3-0"]
        assert relay.parked == 0


@pytest.mark.parametrize("kind", KINDS)
def test_b29_refused_messages_in_a_row_are_parked_past_the_batch(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two refused messages in a row, with batches of one message, are both parked once the
    message after them is published; a refused message with none after it is tried again, not
    parked, until one comes and passes; `max_attempts=None` never parks."""
    got: list[OutboxMessage] = []
    with database_of(kind, request, tmp_path) as database:
        commit(database, "a", "refused", "refused", "orders.paid")
        with Relay(database.url, refusing("refused", got), batch=1, max_attempts=2) as relay:
            assert relay_until(relay, 1) == ["RefusedError"] * 2  # the first one, twice
            assert [m.payload for m in got] == [b"a-2"]
            # The first was tried once more, with the second, before the third passed.
            assert [p.attempts for p in relay.parked_messages()] == [3, 2]

            commit(database, "b", "refused")  # nothing after it: an outage, for all we know
            for _ in range(3):
                with pytest.raises(RefusedError):
                    relay.run_once()
            assert relay.parked == 2
            commit(database, "c", "orders.paid")
            assert relay.run_once() == 1
            assert relay.parked == 3
            assert [m.payload for m in got] == [b"a-2", b"c-0"]
            assert relay.requeue([relay.parked_messages()[0].message_id]) == 1
            assert len(relay.parked_messages()) == 2
        with Relay(database.url, refusing("refused", got), max_attempts=None) as strict:
            for _ in range(3):
                with pytest.raises(RefusedError):
                    strict.run_once()
            commit(database, "d", "orders.paid")
            with pytest.raises(RefusedError):
                strict.run_once()  # the re-queued message holds back the one after it
            assert strict.parked == 0
        assert [m.payload for m in got] == [b"a-2", b"c-0"]


OLD_COLUMNS = {
    "sqlite": ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "TEXT", "REAL"),
    "postgres": ("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BYTEA", "JSONB", "FLOAT8"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_b29_an_outbox_table_of_an_older_release_gets_the_parking_columns(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An outbox table created before attempts were counted, holding a committed message,
    gets its new columns from the relay, which publishes and parks on it as on a new one."""
    got: list[OutboxMessage] = []
    with database_of(kind, request, tmp_path) as database:
        table = outbox_table(database.table)
        key, blob, json, time = OLD_COLUMNS[kind]
        database.execute(
            f'CREATE TABLE "{table}" (id {key}, message_id TEXT NOT NULL UNIQUE, '
            f"topic TEXT NOT NULL, payload {blob} NOT NULL, headers {json} NOT NULL, "
            f"created_at {time} NOT NULL, published_at {time})"
        )
        commit(database, "a", "refused", "orders.paid")  # written by the app, as it was
        with Relay(database.url, refusing("refused", got), max_attempts=1) as relay:
            assert relay.run_once() == 1
            assert [m.payload for m in got] == [b"a-1"]
            [parked] = relay.parked_messages()
            assert (parked.topic, parked.attempts) == ("refused", 1)
        with Relay(database.url, got.append) as again:  # the columns exist: nothing to add
            assert again.requeue() == 1
            assert again.run_once() == 1
        assert [m.payload for m in got] == [b"a-1", b"a-0"]


def test_b29_parking_takes_a_positive_max_attempts(tmp_path: Path) -> None:
    """`max_attempts` below 1 is a configuration error."""
    from retrysafe import ConfigurationError

    with pytest.raises(ConfigurationError, match="max_attempts"):
        Relay(f"sqlite:///{tmp_path / 'app.db'}", print, max_attempts=0)
    assert sqlite3.sqlite_version_info >= (3, 16)  # pragma_table_info, for the upgrade


@pytest.mark.parametrize(
    ("error", "most"), [(ConnectionError, 1), (RefusedError, MOST_SUSPECTS + 1)]
)
def test_b29_an_outage_costs_a_bounded_number_of_publishes_a_batch(
    error: type[Exception], most: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A publisher that fails every message, for as long as 30 batches: one publish a batch
    when it says the broker is out of reach (`ConnectionError`), and never more than the
    suspects a batch goes past plus one when it fails otherwise; nothing is parked."""
    tried: list[int] = []

    def failing(message: OutboxMessage) -> None:
        tried.append(message.id)
        raise error("the broker is down")

    with database_of("sqlite", request, tmp_path) as database:
        for n in range(2 * MOST_SUSPECTS):
            commit(database, f"k{n}", "orders.paid")
        with Relay(database.url, failing, max_attempts=1) as relay:
            per_batch = []
            for _ in range(30):
                before = len(tried)
                with pytest.raises(error):
                    relay.run_once()
                per_batch.append(len(tried) - before)
            assert max(per_batch) == most
            assert relay.parked == 0
