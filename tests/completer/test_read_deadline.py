"""A PostgreSQL server that stalls mid-pass fails the completer's pass within the store URL's
`read_timeout` (its own statements and commits are under the store's read deadline), instead of
holding it, and `retrysafe complete`, for ever.

The server is real, behind a TCP relay (`tests/flow/relay.py`) that stops forwarding once the
completer's connection is open.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from retrysafe import StoreUnavailableError
from retrysafe.completer import Completer
from retrysafe.completer._connect import Connector, connector
from tests.completer import orders
from tests.flow.relay import Relay

pytestmark = pytest.mark.postgres

BOUND = 10.0  # seconds: read_timeout=1, and slack


def test_b20_a_stalled_server_fails_the_pass_within_read_timeout(postgres_url: str) -> None:
    """The relay stalls just after the completer connects: the pass raises
    `StoreUnavailableError` naming read_timeout, within the bound."""
    relay = Relay.before(postgres_url)
    try:
        base, table = connector(relay.url(postgres_url, "read_timeout=1"))

        def open_then_stall() -> Any:
            connection = base()
            relay.stall()
            return connection

        completer = Completer(
            orders.registry,
            connect=Connector(open_then_stall, base.encryption, base.deadline),
            table=table,
        )
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                completer.run_once()
                outcome.append(None)
            except BaseException as error:
                outcome.append(error)

        started = time.monotonic()
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(BOUND)
        assert not worker.is_alive(), "the pass still hangs on the stalled server"
        assert time.monotonic() - started < BOUND
        (error,) = outcome
        assert isinstance(error, StoreUnavailableError)
        assert "read_timeout=1" in str(error)
    finally:
        relay.close()
