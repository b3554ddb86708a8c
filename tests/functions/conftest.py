"""Stores for the decorator tests: every backend, both faces, on a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from retrysafe import AsyncStore, ManualClock, Store, open_async_store, open_store
from tests.conftest import drop_mysql_tables, fresh_store_url

BACKENDS = ["memory", "sqlite", "postgres", "mysql", "redis", "redis-cluster"]


def drop_backend_data(url: str) -> None:
    """Delete what one test created on a shared server: its table or its key prefix."""
    if url.startswith("postgresql://"):
        import psycopg

        table = url.rsplit("table=", 1)[1]
        with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')  # a unique_name(), never user input
    elif url.startswith("mysql://"):
        drop_mysql_tables(url, url.rsplit("table=", 1)[1])
    elif url.startswith("redis://"):
        import redis

        prefix = url.rsplit("prefix=", 1)[1]
        client = redis.Redis.from_url(url.split("?", 1)[0])
        try:
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
        finally:
            client.close()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL for a fresh, empty store on each backend; what it created is removed after."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        yield url


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says."""
    return ManualClock()


@pytest.fixture
def store(store_url: str, clock: ManualClock) -> Iterator[Store]:
    """A sync store on the manual clock."""
    opened = open_store(store_url, clock=clock)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
async def astore(store_url: str, clock: ManualClock) -> AsyncIterator[AsyncStore]:
    """An async store on the manual clock."""
    opened = open_async_store(store_url, clock=clock)
    try:
        yield opened
    finally:
        await opened.aclose()
