"""The store fixture: every backend, both faces, one contract suite.

Async faces run through `BlockingFacade`, which drives each coroutine on one event loop from
the calling thread, so the same test exercises the async code; threads calling it concurrently
become concurrent tasks on that loop.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from retrysafe import ManualClock, Store, open_async_store, open_store
from tests.conftest import unique_name

BACKENDS = ["memory", "sqlite", "postgres", "redis"]
FACES = ["sync", "async"]


class BlockingFacade:
    """Present an async store as a sync one by running its coroutines on a portal's loop."""

    def __init__(self, store: Any, portal: BlockingPortal) -> None:
        self._store = store
        self._portal = portal
        self.clock = store.clock

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, "aclose" if name == "close" else name)

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._portal.call(functools.partial(method, *args, **kwargs))

        return call


@contextlib.contextmanager
def _cleanup(backend: str, url: str) -> Iterator[None]:
    try:
        yield
    finally:
        if backend == "postgres":
            import psycopg

            table = url.rsplit("table=", 1)[1]
            with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        elif backend == "redis":
            import redis

            prefix = url.rsplit("prefix=", 1)[1]
            client = redis.Redis.from_url(url.split("?", 1)[0])
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
            client.close()


@pytest.fixture
def store_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL for a fresh, empty store of the test's `backend`."""
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}?timeout=30"
    elif backend == "postgres":
        url = f"{request.getfixturevalue('postgres_url')}?table={unique_name()}"
        with _cleanup(backend, url):
            yield url
    elif backend == "redis":
        url = f"{request.getfixturevalue('redis_url')}?prefix={unique_name()}"
        with _cleanup(backend, url):
            yield url
    else:  # pragma: no cover - a typo in a parametrization
        raise ValueError(backend)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each store backend."""
    return str(request.param)


@pytest.fixture(params=FACES)
def face(request: pytest.FixtureRequest) -> str:
    """The sync face and the async face."""
    return str(request.param)


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says."""
    return ManualClock()


@pytest.fixture
def make_store(store_url: str, face: str, clock: ManualClock) -> Iterator[Callable[[], Store]]:
    """A factory of stores on one backend and face, all sharing the test's clock and data."""
    opened: list[Store] = []
    shared = store_url == "memory://"  # a memory store's data lives in its one instance
    with contextlib.ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal()) if face == "async" else None

        def make() -> Store:
            if shared and opened:
                return opened[0]
            if portal is None:
                store = open_store(store_url, clock=clock)
            else:
                store = BlockingFacade(portal.call(_open_async, store_url, clock), portal)  # type: ignore[assignment]
            opened.append(store)
            return store

        yield make
        for store in opened:
            store.close()


async def _open_async(url: str, clock: ManualClock) -> Any:
    return open_async_store(url, clock=clock)


@pytest.fixture
def store(make_store: Callable[[], Store]) -> Store:
    """A fresh store of each backend and face, on a manual clock."""
    return make_store()
