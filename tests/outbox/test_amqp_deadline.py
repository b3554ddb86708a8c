"""A broker that stops answering in the middle of a publish (B40): the AMQP publisher gives up
after its `confirm_timeout`, so the relay stops when asked within that bound, and the message
whose confirm never came stays unpublished and is published again, with the same id.

A real RabbitMQ behind a TCP relay (`tests/flow/relay.py`) that either stops forwarding (a
stalled link: the broker may get the message later) or forwards the publish and drops every
reply (the broker took the message, its confirm is lost). Without the bound, only pika's
heartbeat would end the wait, after about two minutes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from retrysafe.outbox import AmqpPublisher, OutboxMessage, Relay, outbox_table
from tests.flow.relay import Relay as TcpRelay
from tests.outbox.test_crash import amqp_queue, drain
from tests.outbox.test_outbox import database_of
from tests.outbox.test_parking import commit

pytestmark = pytest.mark.rabbitmq

WAIT = 15.0  # seconds: far more than the 1 s bound, far less than pika's heartbeat


@pytest.mark.parametrize("fault", ["stall", "drop_replies"])
def test_b40_a_confirm_that_never_comes_ends_the_publish_and_the_message_is_sent_again(
    fault: str, request: pytest.FixtureRequest, tmp_path: Path, amqp_url: str
) -> None:
    """The publish of the second message gets no confirm: within `confirm_timeout` it fails as
    an outage, `stop` ends `run`, and the message stays unpublished (its failure counted); the
    next run publishes it and the rest, so each message reaches the queue at least once."""
    parts = urlsplit(amqp_url)
    tcp = TcpRelay(parts.hostname or "127.0.0.1", parts.port or 5672)
    publisher = AmqpPublisher(tcp.url(amqp_url), confirm_timeout=1)
    direct = AmqpPublisher(amqp_url)
    faulted = threading.Event()

    def publish(message: OutboxMessage) -> None:
        if message.payload == b"o-1" and not faulted.is_set():
            getattr(tcp, fault)()
            faulted.set()
        publisher(message)

    try:
        with (
            database_of("sqlite", request, tmp_path) as database,
            amqp_queue(amqp_url) as (channel, queue),
            Relay(database.url, publish, poll_interval=0.05, max_backoff=0.1) as relay,
        ):
            commit(database, "o", queue, queue, queue)
            running = threading.Thread(target=relay.run, daemon=True)
            running.start()
            assert faulted.wait(WAIT)
            relay.stop()
            running.join(WAIT)
            assert not running.is_alive()
            table = outbox_table(database.table)
            rows = database.execute(
                f'SELECT message_id, published_at IS NOT NULL, attempts, last_error FROM "{table}" '  # noqa: S608
                "ORDER BY id"
            )
            [first, second, third] = [row[0] for row in rows]
            assert [row[1:3] for row in rows] == [(True, 0), (False, 1), (False, 0)]
            assert "confirm_timeout" in rows[1][3]
            tcp.close()
            publisher.close()
            relay.publisher = direct
            assert relay.run_once() == 2
            ids = [properties.message_id for properties, _ in drain(channel, queue)]
            assert [i for i in ids if i != second] == [first, third]
            assert 1 <= ids.count(second) <= 2  # twice if the broker took the first copy
    finally:
        tcp.close()
        publisher.close()
        direct.close()
