"""The outbox relay on a PostgreSQL server that stops answering (B29): it neither hangs in a batch
nor in opening its connection, and once the server answers again it publishes what waits.

The stall is real: a TCP relay in front of the test's PostgreSQL (`tests/flow/relay.py`) stops
forwarding, either way, with the connections left open, as a hung server or a route that drops
packets leaves them. Without the bounds, each `run_once` here would wait for ever.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from retrysafe import StoreUnavailableError
from retrysafe.outbox import OutboxMessage, Relay
from tests.flow.relay import Relay as TcpRelay
from tests.outbox.test_outbox import database_of, ids_of, order

pytestmark = pytest.mark.postgres

WAIT = 15.0  # seconds: far more than a bound of 1 s (2 for libpq's connect) takes


def test_b29_a_stalled_database_fails_the_batch_and_the_reconnect_then_the_relay_resumes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A batch whose reply does not come fails within `read_timeout`; a new connection to a
    server that never greets fails within `connect_timeout`; both are errors `run` retries.
    Once the server answers, the waiting messages are published, each once."""
    got: list[str] = []

    def publish(message: OutboxMessage) -> None:
        got.append(message.message_id)

    with database_of("postgres", request, tmp_path) as database:
        tcp = TcpRelay.before(database.url)
        url = tcp.url(database.url, "read_timeout=1&connect_timeout=1")
        try:
            order("psycopg", database, "a")
            with Relay(url, publish) as relay:
                assert relay.run_once() == 2
                tcp.stall()
                with pytest.raises(StoreUnavailableError, match="read_timeout=1"):
                    relay.run_once()  # the batch: its SELECT's reply never comes
                relay.close()  # what `run` does after a failure: a new connection next
                with pytest.raises(psycopg.OperationalError):
                    relay.run_once()  # the new connection: the server never greets
                relay.close()
                tcp.resume()
                order("psycopg", database, "b")
                deadline = time.monotonic() + WAIT
                while len(got) < 4 and time.monotonic() < deadline:
                    relay.run_once()  # the stalled batch's locks go with its connection
                    time.sleep(0.05)
            assert got == ids_of(database, "a") + ids_of(database, "b")
        finally:
            tcp.close()
