"""The MySQL store's `read_timeout`: a server or network that stalls mid-statement fails the call
with StoreUnavailableError, and the store recovers once it answers again (B20).

The stall is real: a TCP relay in front of the test's MariaDB (`tests/flow/relay.py`) stops
forwarding, either way, with the store's connections left open, as a hung server or a dropped
route leaves them.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pymysql
import pytest

from retrysafe import ConfigurationError, Identity, StoreUnavailableError, open_store
from retrysafe.stores._sql.mysql_connection import parse_url
from tests.conftest import drop_mysql_tables, unique_name
from tests.flow.relay import Relay
from tests.stores.conftest import OpenStore

pytestmark = pytest.mark.mysql

LEASE = 30.0
RETENTION = 3600.0


def ident(key: str) -> Identity:
    """An identity in this module's namespace."""
    return Identity("mysql-read-timeout", "tenant", key)


@pytest.fixture
def relayed_url(mysql_url: str) -> Iterator[tuple[str, Relay]]:
    """A store URL through a relay to the test server, on a fresh table, with a 1 s read
    timeout; and the relay."""
    options = parse_url(mysql_url)
    relay = Relay(options.host, options.port)
    table = unique_name()
    query = urlencode({"table": table, "read_timeout": 1, "pool_timeout": 30})
    login = options.user if not options.password else f"{options.user}:{options.password}"
    try:
        yield f"mysql://{login}@127.0.0.1:{relay.port}/{options.database}?{query}", relay
    finally:
        relay.close()
        drop_mysql_tables(mysql_url, table)


def test_b20_a_stalled_server_is_unavailable_within_read_timeout_then_recovers(
    open_face: OpenStore, relayed_url: tuple[str, Relay]
) -> None:
    """A call whose reply does not come within `read_timeout` raises StoreUnavailableError
    (a lost connection, 2013, as its cause) instead of waiting for ever; that connection is
    dropped, and once the server answers again the next call works on a new one."""
    url, relay = relayed_url
    store = open_face(url)
    claim = store.claim(ident("before"), "fp", lease=LEASE, retention=RETENTION)
    assert claim.acquired
    relay.stall()
    with pytest.raises(StoreUnavailableError) as caught:
        store.claim(ident("stalled"), "fp", lease=LEASE, retention=RETENTION)
    assert isinstance(caught.value.__cause__, pymysql.err.OperationalError)
    assert caught.value.__cause__.args[0] == 2013
    relay.resume()
    store.complete(ident("before"), claim.token, b"done", retention=RETENTION)
    found = store.get(ident("before"))
    assert found is not None
    assert found.outcome == b"done"


def test_read_timeout_must_outlast_the_lock_wait(mysql_url: str) -> None:
    """A read timeout no longer than `lock_timeout` would turn every lock wait into a lost
    connection: refused when the store is configured, as a non-positive one is."""
    for options in ("read_timeout=5&lock_timeout=5", "read_timeout=0", "read_timeout=-1"):
        with pytest.raises(ConfigurationError, match="read_timeout"):
            open_store(f"{mysql_url}{'&' if '?' in mysql_url else '?'}{options}")
    base = mysql_url.split("?", 1)[0]
    assert parse_url(f"{base}?read_timeout=6&lock_timeout=5").read_timeout == 6


def test_b20_a_reply_is_awaited_30_s_past_the_lock_wait_by_default(mysql_url: str) -> None:
    """Unset, `read_timeout` is the lock wait plus 30 s: `lock_timeout`'s, else InnoDB's
    default 50 s; a set one is kept as it is. No statement waits for ever by default."""
    base = mysql_url.split("?", 1)[0]
    assert parse_url(base).reply_timeout == 80
    assert parse_url(f"{base}?lock_timeout=5").reply_timeout == 35
    assert parse_url(f"{base}?lock_timeout=5&read_timeout=6").reply_timeout == 6
