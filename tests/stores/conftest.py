"""The store fixture: every backend, both faces, one contract suite.

Async faces run through `BlockingFacade`, which drives each coroutine on one event loop from
the calling thread, so the same test exercises the async code; threads calling it concurrently
become concurrent tasks on that loop.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from retrysafe import ManualClock, Store, open_async_store, open_store
from retrysafe.stores.cached import ReplayCache
from tests.conftest import fresh_store_url

BACKENDS = [
    "memory",
    "sqlite",
    "postgres",
    "mysql",
    "redis",
    "redis-cluster",
    "redis-cluster-wait",
]
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


@pytest.fixture
def store_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL for a fresh, empty store of the test's `backend`."""
    with fresh_store_url(backend, request, tmp_path) as url:
        yield url


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


async def _open_async(url: str, clock: ManualClock | None) -> Any:
    return open_async_store(url, clock=clock)


@pytest.fixture
def store(make_store: Callable[[], Store]) -> Store:
    """A fresh store of each backend and face, on a manual clock."""
    return make_store()


def wait_listening(store: Any) -> None:
    """Wait (bounded) until a replay cache answers from memory: in front of a store that
    announces deletes (Redis, PostgreSQL) it first subscribes to them, in a thread of its own."""
    deadline = time.monotonic() + 10
    while not store.listening:
        assert time.monotonic() < deadline, "the cache did not subscribe to deletes in 10 s"
        time.sleep(0.01)


@pytest.fixture
def opened(clock: ManualClock) -> Iterator[Callable[[str], ReplayCache]]:
    """Open sync stores with a replay cache from URLs (on the test's clock), each subscribed
    to the store's deletes where it has them; close them afterwards."""
    stores: list[ReplayCache] = []

    def open_(url: str) -> ReplayCache:
        store = open_store(url, clock=clock)
        assert isinstance(store, ReplayCache)
        stores.append(store)
        wait_listening(store)
        return store

    yield open_
    for store in stores:
        store.close()


OpenStore = Callable[..., Store]
"""Opens a store of the test's face from a URL (and a clock): see `open_face`."""


@pytest.fixture(params=FACES)
def open_face(request: pytest.FixtureRequest) -> Iterator[OpenStore]:
    """Open stores of one face from URLs; async ones run on one event loop behind a facade."""
    opened: list[Any] = []
    with contextlib.ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal()) if request.param == "async" else None

        def make(url: str, clock: ManualClock | None = None) -> Store:
            if portal is None:
                store: Any = open_store(url, clock=clock)
            else:
                store = BlockingFacade(portal.call(_open_async, url, clock), portal)
            opened.append(store)
            return store  # type: ignore[no-any-return]

        yield make
        for store in opened:
            store.close()


def concrete(store: Store) -> Any:
    """Return the store behind an async facade, or the store itself."""
    return getattr(store, "_store", store)
