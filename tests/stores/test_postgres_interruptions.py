"""An interruption that lands in a PostgreSQL store call while it holds a pooled connection
(`KeyboardInterrupt`, `SystemExit`, a job runner's time limit: anything not an `Exception`)
gives the connection back to the pool: before, one landing between the pool's `getconn` and the
read deadline's `arm`, or in the deadline's `disarm`, left it lent for good, and once the pool
had lent out all its connections that way every call of the process waited `pool_timeout` and
failed with `StoreUnavailableError` (B20: the store must stay available after an interruption).

The interruption is raised deterministically, where a signal handler's would land: from the
store's read deadline (`arm`, `disarm`), which a wrapper interrupts once. Real server, both
faces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from retrysafe import Identity, open_async_store, open_store
from tests.conftest import drop_postgres_tables, unique_name

POOL_MAX = 2
LEASE = 30.0
RETENTION = 3600.0


class TimeLimitExceeded(BaseException):
    """A job runner's hard time limit, raised in the job (not an `Exception`)."""


class Interrupting:
    """A store's read deadline whose `where` method (`arm` or `disarm`) raises `interrupt` on
    its next call, before it does anything, as a signal handler running there would."""

    def __init__(self, deadline: Any, where: str, interrupt: type[BaseException]) -> None:
        self._deadline, self._where, self._interrupt = deadline, where, interrupt
        self.pending = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._deadline, name)

    def _maybe(self, where: str) -> None:
        if self.pending and where == self._where:
            self.pending = False
            raise self._interrupt

    def arm(self, conn: Any, **options: Any) -> Any:
        self._maybe("arm")
        return self._deadline.arm(conn, **options)

    def disarm(self, armed: Any) -> bool:
        self._maybe("disarm")
        return bool(self._deadline.disarm(armed))


@pytest.fixture
def url(postgres_url: str) -> Iterator[str]:
    """A store URL on a fresh table, with a small pool that times out soon."""
    table = unique_name()
    options = {"table": table, "pool_min": 1, "pool_max": POOL_MAX, "pool_timeout": 2}
    try:
        yield f"{postgres_url}?{urlencode(options)}"
    finally:
        drop_postgres_tables(postgres_url, table)


def ident(key: str) -> Identity:
    """An identity in this module's namespace."""
    return Identity("pg-interrupted", "tenant", key)


INTERRUPTS = [KeyboardInterrupt, SystemExit, TimeLimitExceeded]


@pytest.mark.parametrize("where", ["arm", "disarm"])
@pytest.mark.parametrize("interrupt", INTERRUPTS)
def test_b20_an_interrupted_sync_call_gives_its_pooled_connection_back(
    url: str, where: str, interrupt: type[BaseException]
) -> None:
    """More interrupted calls than the pool has connections, each on a pooled connection (a
    renewal; `list_records`): the store still answers, and the pool can lend every one of its
    connections at once (none was left out)."""
    store: Any = open_store(url)
    try:
        claim = store.claim(ident("k"), "fp", lease=LEASE, retention=RETENTION)
        calls: list[Callable[[], Any]] = [
            lambda: store.renew(ident("k"), claim.token, lease=LEASE),
            store.list_records,
        ]
        for call in calls * POOL_MAX:
            store._deadline = Interrupting(store._deadline, where, interrupt)
            with pytest.raises(interrupt):
                call()
            store._deadline = store._deadline._deadline
        assert store.renew(ident("k"), claim.token, lease=LEASE).token == claim.token
        assert [record.identity for record in store.list_records()] == [ident("k")]
        lent = [store._pool.getconn(5) for _ in range(POOL_MAX)]  # none was left out
        for conn in lent:
            store._pool.putconn(conn)
    finally:
        store.close()


@pytest.mark.parametrize("where", ["arm", "disarm"])
def test_b20_an_interrupted_async_call_gives_its_pooled_connection_back(
    url: str, where: str
) -> None:
    """The async face likewise (an interruption that is not a cancellation: a custom
    `BaseException` raised in the call, which asyncio passes on)."""

    async def main() -> None:
        store: Any = open_async_store(url)
        try:
            claim = await store.claim(ident("k"), "fp", lease=LEASE, retention=RETENTION)
            for _ in range(2 * POOL_MAX):
                store._deadline = Interrupting(store._deadline, where, TimeLimitExceeded)
                with pytest.raises(TimeLimitExceeded):
                    await store.renew(ident("k"), claim.token, lease=LEASE)
                store._deadline = store._deadline._deadline
            async with asyncio.timeout(10):
                renewed = await store.renew(ident("k"), claim.token, lease=LEASE)
            assert renewed.token == claim.token
            lent = [await store._pool.getconn(5) for _ in range(POOL_MAX)]  # none left out
            for conn in lent:
                await store._pool.putconn(conn)
        finally:
            await store.aclose()

    asyncio.run(main())
