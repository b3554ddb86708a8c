"""The completer's connection to a PostgreSQL server that accepts and never answers fails within
the store URL's `connect_timeout`, so a pass of `retrysafe complete` ends (and the next one
tries again) instead of waiting for ever.

The server is real, behind a TCP relay (`tests/flow/relay.py`) that stops forwarding.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from retrysafe.completer._connect import connector
from tests.flow.relay import Relay

pytestmark = pytest.mark.postgres

BOUND = 15.0  # seconds: libpq's 2 at least, and slack


def test_a_server_that_never_greets_fails_the_connection_within_connect_timeout(
    postgres_url: str,
) -> None:
    """With the relay flowing the connection opens; stalled, it fails (libpq waits at least 2
    s) rather than hanging the pass."""
    relay = Relay.before(postgres_url)
    try:
        connect, _table = connector(relay.url(postgres_url, "connect_timeout=1"))
        connect().close()
        relay.stall()
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            connect()
        assert time.monotonic() - started < BOUND  # not the minute a bare libpq takes here
    finally:
        relay.close()
