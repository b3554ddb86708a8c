"""The PostgreSQL store's `read_timeout`: a server or network that stalls mid-statement fails the
call with StoreUnavailableError within it, and the store recovers once the server answers again
(B20). On both faces, with and without the async store's auto-pipeline, and for a waiter
(a replay cache's delete listener: `test_replay_cache_deletes.py`).

The stall is real: a TCP relay in front of the test's PostgreSQL (`tests/flow/relay.py`) stops
forwarding, either way, with the store's connections left open, as a hung server or a dropped
route leaves them. Without the deadline each of these calls would wait for ever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from retrysafe import ConfigurationError, Identity, StoreUnavailableError, open_store
from retrysafe.stores._sql.postgres_connection import parse_url
from tests.conftest import drop_postgres_tables, unique_name
from tests.flow.relay import Relay
from tests.stores.conftest import OpenStore

pytestmark = pytest.mark.postgres

LEASE = 30.0
RETENTION = 3600.0
READ_TIMEOUT = 1.0
BOUND = 15.0
"""Far more than any call here may take once its deadline has cut it (no timing is asserted
closer than this: the point is that the call returns at all)."""


def ident(key: str) -> Identity:
    """An identity in this module's namespace."""
    return Identity("postgres-read-timeout", "tenant", key)


@pytest.fixture
def relayed(postgres_url: str) -> Iterator[tuple[str, Relay]]:
    """A store URL through a relay to the test server, on a fresh table, with a 1 s read
    timeout; and the relay."""
    relay = Relay.before(postgres_url)
    table = unique_name()
    query = f"table={table}&read_timeout={READ_TIMEOUT:g}&pool_timeout=30&connect_timeout=2"
    try:
        yield relay.url(postgres_url, query), relay
    finally:
        relay.close()
        drop_postgres_tables(postgres_url, table)


@pytest.mark.parametrize("autopipeline", ["true", "false"])
def test_b20_a_stalled_server_is_unavailable_within_read_timeout_then_recovers(
    open_face: OpenStore, relayed: tuple[str, Relay], autopipeline: str
) -> None:
    """A call whose reply does not come within `read_timeout` raises StoreUnavailableError
    naming the timeout (a lost connection as its cause) instead of waiting for ever; once the
    server answers again the next calls work, on a new connection."""
    url, relay = relayed
    store = open_face(f"{url}&autopipeline={autopipeline}")
    claim = store.claim(ident("before"), "fp", lease=LEASE, retention=RETENTION)
    assert claim.acquired
    relay.stall()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="read_timeout=1 s") as caught:
        store.claim(ident("stalled"), "fp", lease=LEASE, retention=RETENTION)
    assert time.monotonic() - started < BOUND
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    relay.resume()
    store.complete(ident("before"), claim.token, b"done", retention=RETENTION)
    found = store.get(ident("before"))
    assert found is not None
    assert found.outcome == b"done"
    # The stalled claim's outcome is unknown to the caller; whatever it did, the key is not
    # handed out twice: a claim now either acquires it (the statement never ran) or finds it.
    again = store.claim(ident("stalled"), "fp", lease=LEASE, retention=RETENTION)
    assert again.acquired or again.record.identity == ident("stalled")


def test_b20_a_waiter_on_a_stalled_server_gives_up_within_its_timeout_and_read_timeout(
    open_face: OpenStore, relayed: tuple[str, Relay]
) -> None:
    """A waiter on LISTEN whose connection stalls returns (with StoreUnavailableError) within
    its own timeout plus `read_timeout`, not never."""
    url, relay = relayed
    store = open_face(url)
    held = store.claim(ident("held"), "fp", lease=LEASE, retention=RETENTION)
    assert held.acquired
    relay.stall()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        store.wait(ident("held"), timeout=0.5)
    assert time.monotonic() - started < BOUND
    relay.resume()
    store.release(ident("held"), held.token)
    assert store.get(ident("held")) is None


def test_b20_the_sync_watchdog_cuts_no_statement_that_answers_in_time(
    relayed: tuple[str, Relay],
) -> None:
    """Many short statements from several threads, each armed and disarmed, with a deadline
    shorter than the run: none is cut, so none fails, and no connection is lost."""
    url, _relay = relayed
    store = open_store(url.replace("read_timeout=1", "read_timeout=0.5"))
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for index in range(60):
                key = ident(f"t{thread}-{index}")
                claim = store.claim(key, "fp", lease=LEASE, retention=RETENTION)
                store.complete(key, claim.token, b"ok", retention=RETENTION)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND * 4)
        assert not errors
        assert store.stats().done == 240
    finally:
        store.close()


def test_read_timeout_is_30_seconds_by_default_and_must_be_positive(postgres_url: str) -> None:
    """Unset, a statement waits 30 s for its reply; zero, a negative number or a word is
    refused when the store is configured."""
    base = postgres_url.split("?", 1)[0]
    assert parse_url(base)[1].read_timeout == 30.0
    assert parse_url(f"{base}?read_timeout=2.5")[1].read_timeout == 2.5
    assert "read_timeout" not in parse_url(f"{base}?read_timeout=2.5")[0]  # not libpq's
    for value in ("0", "-1", "soon"):
        with pytest.raises(ConfigurationError, match="read_timeout"):
            open_store(f"{base}?read_timeout={value}")
