"""The relay's waits (B29: every committed message is published): a long outage of the store
never kills it, and a wait that is not a finite number of seconds is refused up front."""

from __future__ import annotations

import logging
import math
import socket
import threading

import pytest

from retrysafe._errors import ConfigurationError
from retrysafe.outbox import OutboxMessage, Relay

FAILURES = 1100
"""Failures in a row the relay goes through: past 1024, where `2**failures` overflowed a float
(about 8.5 hours of outage with the default 1 s interval and 30 s ceiling)."""


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class StopAfter(logging.Handler):
    """Counts the relay's failure warnings and stops it after `limit` of them."""

    def __init__(self, relay: Relay, limit: int) -> None:
        super().__init__(logging.WARNING)
        self.relay, self.limit, self.failures = relay, limit, 0

    def emit(self, record: logging.LogRecord) -> None:
        """Count one failure; stop the relay at the limit."""
        if record.getMessage().startswith("The outbox relay failed"):
            self.failures += 1
            if self.failures >= self.limit:
                self.relay.stop()


def ignore(message: OutboxMessage) -> None:
    """A publisher the test never reaches (the store is down)."""


def test_b29_the_relay_outlives_more_than_1024_failures_in_a_row() -> None:
    """Against a PostgreSQL that refuses every connection, the relay keeps retrying (with tiny
    waits, to get there quickly) past 1024 failures in a row and returns when stopped."""
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/test?connect_timeout=2"
    relay = Relay(url, ignore, poll_interval=1e-6, max_backoff=1e-6)
    handler = StopAfter(relay, FAILURES)
    logger = logging.getLogger("retrysafe")
    logger.addHandler(handler)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            relay.run()
        except BaseException as error:  # reported in the assertion
            errors.append(error)

    try:
        runner = threading.Thread(target=run)
        runner.start()
        runner.join(120)
    finally:
        relay.stop()
        logger.removeHandler(handler)
        relay.close()
    assert not runner.is_alive()
    assert errors == []
    assert handler.failures >= FAILURES


@pytest.mark.parametrize(
    "option",
    [
        {"poll_interval": math.nan},
        {"poll_interval": math.inf},
        {"max_backoff": math.nan},
        {"max_backoff": math.inf},
        {"retention": math.nan},
        {"retention": math.inf},
    ],
)
def test_b29_the_relay_refuses_a_wait_that_is_not_a_finite_number(option: dict[str, float]) -> None:
    """NaN passes `<= 0` and would make the idle loop spin; infinity never wakes: both refused."""
    with pytest.raises(ConfigurationError, match="finite"):
        Relay("sqlite:///unused.db", ignore, **option)
