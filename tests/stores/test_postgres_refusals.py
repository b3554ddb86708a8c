"""A PostgreSQL server that refuses connections fails the store's calls at once with
StoreUnavailableError (B20), not after `pool_timeout`; once it accepts again the next call
works; a pool that is merely busy still makes a call wait for one of its connections.

The refusals are real: a TCP relay in front of the test's PostgreSQL (`tests/flow/relay.py`)
closes every connection it carries and answers new ones with a reset until it is restored, as
a server that went down (or was never up, for a store opened meanwhile) does. Both faces, with
and without the async store's auto-pipeline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from retrysafe import Identity, Store, StoreUnavailableError
from tests.conftest import drop_postgres_tables, unique_name
from tests.flow.relay import Relay
from tests.stores.conftest import OpenStore, concrete

pytestmark = pytest.mark.postgres

LEASE = 30.0
RETENTION = 3600.0
POOL_TIMEOUT = 5.0
FAST = 1.5
"""Far less than `POOL_TIMEOUT`, far more than a refused connection takes (a loaded machine)."""


def ident(key: str) -> Identity:
    """An identity in this module's namespace."""
    return Identity("postgres-refusals", "tenant", key)


@pytest.fixture
def relayed(postgres_url: str) -> Iterator[tuple[str, Relay]]:
    """A store URL through a relay to the test server, on a fresh table; and the relay."""
    relay = Relay.before(postgres_url)
    table = unique_name()
    query = f"table={table}&pool_timeout={POOL_TIMEOUT:g}&connect_timeout=2"
    try:
        yield relay.url(postgres_url, query), relay
    finally:
        relay.close()
        drop_postgres_tables(postgres_url, table)


def fails_at_once(call: Callable[[], object]) -> None:
    """Assert that `call` raises StoreUnavailableError well within `pool_timeout`."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        call()
    assert time.monotonic() - started < FAST


def calls(store: Store, name: str) -> list[Callable[[], object]]:
    """A claim, a read and a count: the hot path and the pool's own."""
    return [
        lambda: store.claim(ident(name), "fp", lease=LEASE, retention=RETENTION),
        lambda: store.get(ident(name)),
        store.stats,
    ]


def works_at_once(store: Store, name: str) -> None:
    """Assert that a claim, its completion and a count all succeed promptly."""
    started = time.monotonic()
    claim = store.claim(ident(name), "fp", lease=LEASE, retention=RETENTION)
    assert claim.acquired
    store.complete(ident(name), claim.token, b"done", retention=RETENTION)
    assert store.stats().done >= 1
    assert time.monotonic() - started < FAST


@pytest.mark.parametrize("autopipeline", ["true", "false"])
def test_b20_a_refusing_server_fails_every_call_at_once_and_the_next_call_after_works(
    open_face: OpenStore, relayed: tuple[str, Relay], autopipeline: str
) -> None:
    """While the server refuses connections, each call raises StoreUnavailableError at once,
    over and over (not after `pool_timeout` once the pool's connections are gone); the first
    call after the server is back succeeds, and so do the ones after it."""
    url, relay = relayed
    store = open_face(f"{url}&autopipeline={autopipeline}")
    works_at_once(store, "before")
    relay.cut()
    for round_ in range(3):
        for call in calls(store, f"during-{round_}"):
            fails_at_once(call)
    relay.restore()
    works_at_once(store, "after")
    works_at_once(store, "after-2")


@pytest.mark.parametrize("autopipeline", ["true", "false"])
def test_b20_a_store_opened_while_its_server_refuses_fails_at_once_then_works(
    open_face: OpenStore, relayed: tuple[str, Relay], autopipeline: str
) -> None:
    """A store opened while its server refuses connections fails its calls at once too (its
    pool never had a connection), and works from the first call once the server accepts."""
    url, relay = relayed
    relay.cut()
    store = open_face(f"{url}&autopipeline={autopipeline}")
    for round_ in range(2):
        for call in calls(store, f"during-{round_}"):
            fails_at_once(call)
    relay.restore()
    works_at_once(store, "after")


def test_b20_a_busy_pool_still_waits_for_one_of_its_connections(
    open_face: OpenStore, relayed: tuple[str, Relay]
) -> None:
    """With every pooled connection lent out, even right after the server came back, a call
    waits for one to be given back (that is what `pool_timeout` is for) and succeeds."""
    url, relay = relayed
    store = open_face(f"{url}&pool_max=1&autopipeline=false")
    works_at_once(store, "before")
    relay.cut()
    fails_at_once(lambda: store.get(ident("during")))
    relay.restore()
    works_at_once(store, "after")
    lent, held = threading.Event(), 1.0
    holder = threading.Thread(target=hold_the_connection, args=(store, lent, held))
    holder.start()
    try:
        assert lent.wait(POOL_TIMEOUT)
        started = time.monotonic()
        claim = store.claim(ident("waited"), "fp", lease=LEASE, retention=RETENTION)
        waited = time.monotonic() - started
    finally:
        holder.join(POOL_TIMEOUT)
    assert claim.acquired
    assert held / 2 < waited < POOL_TIMEOUT


def hold_the_connection(store: Store, lent: threading.Event, seconds: float) -> None:
    """Borrow the store's one pooled connection for `seconds` (on the store's own loop, for
    the async face)."""
    inner: Any = concrete(store)
    portal = getattr(store, "_portal", None)
    if portal is None:
        with inner._connection():
            lent.set()
            time.sleep(seconds)
        return

    async def hold() -> None:
        async with inner._connection():
            lent.set()
            await anyio.sleep(seconds)

    portal.call(hold)
