"""One async store met by two event loops running at once (a loop per thread, as when sync code
runs async code with `asyncio.run` in each thread), and by trio: the Redis, PostgreSQL and MySQL
async stores serve one event loop at a time (`stores/_home.py`). A call on a second loop while
the first still runs fails closed with `StoreUnavailableError` before it claims anything (B20:
no effect runs twice, no call waits for ever, no raw driver error escapes); once the first loop
has stopped, the store moves to the next one, as before. Under trio these stores raise
`ConfigurationError` rather than asyncio's or a driver's `RuntimeError`.

Real servers, real threads and event loops; the first loop is held running on a threading event,
not a sleep, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trio

from retrysafe import (
    ConfigurationError,
    Identity,
    StoreUnavailableError,
    idempotent,
    open_async_store,
)
from tests.conftest import fresh_store_url

# The stores move from loops that have closed: the garbage collector closes the sockets those
# loops left, with a ResourceWarning (as in test_store_moves.py).
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

BOUND = 10.0  # seconds any step may take, at most
LEASE = 30.0
RETENTION = 3600.0

# backend (tests/conftest.py's `fresh_store_url`) and what the URL adds
STORES = {
    "postgres": ("postgres", ""),
    "postgres-nopipe": ("postgres", "&autopipeline=false"),
    "redis": ("redis", ""),
    "mysql": ("mysql", ""),
}


@pytest.fixture(params=list(STORES))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh store of each kind that serves one event loop at a time."""
    backend, extra = STORES[request.param]
    with fresh_store_url(backend, request, tmp_path) as base:
        yield base + extra


def ident(key: str) -> Identity:
    """An identity in this module's namespace."""
    return Identity("loops-at-once", "tenant", key)


class HeldLoop:
    """An event loop in a thread of its own that runs `first` on the store, then keeps running
    (its store's connections in use) until `release`."""

    def __init__(self, first: Callable[[], Any]) -> None:
        self.ready = threading.Event()
        self.released = threading.Event()
        self.outcome: list[Any] = []
        self._first = first
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        try:
            self.outcome.append(await self._first())
        finally:
            self.ready.set()
        # Running, on this thread's loop, until the test is done with the other loop.
        await asyncio.to_thread(self.released.wait, BOUND)

    def __enter__(self) -> HeldLoop:
        self._thread.start()
        assert self.ready.wait(BOUND)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.released.set()
        self._thread.join(BOUND)
        assert not self._thread.is_alive()


def run_bounded(make: Callable[[], Any]) -> Any:
    """Run `make()`'s coroutine on a new event loop of this thread, within `BOUND`."""

    async def bounded() -> Any:
        async with asyncio.timeout(BOUND):
            return await make()

    return asyncio.run(bounded())


def close(store: Any) -> None:
    """Close `store` on a loop of its own. The PostgreSQL pool's workers are tasks of the loop
    that opened it, gone with that loop, so its close raises asyncio's `RuntimeError` there
    (docs/stores.md: close a store on a loop still running); the collector closes the rest."""
    with contextlib.suppress(RuntimeError):
        run_bounded(store.aclose)
    gc.collect()  # the closed loops' sockets, closed here and not in another test


def test_b20_a_second_event_loop_at_once_fails_closed_before_claiming(store_url: str) -> None:
    """While the store's loop runs in another thread, a claim on a second loop raises
    `StoreUnavailableError` at once and claims nothing; once that loop has stopped, the store
    moves to the next loop, and the claim there is acquired."""
    store = open_async_store(store_url)
    with (
        HeldLoop(lambda: store.get(ident("warm-up"))),
        pytest.raises(StoreUnavailableError, match="another one, running at once") as refused,
    ):
        run_bounded(lambda: store.claim(ident("k"), "fp", lease=LEASE, retention=RETENTION))
    server = {"postgresql": "PostgreSQL", "redis": "Redis", "mysql": "MySQL"}
    assert str(refused.value).startswith(f"{server[store_url.partition(':')[0]]} is unavailable")
    # The first loop has stopped: loops used in turn share the store, as before.
    claim = run_bounded(lambda: store.claim(ident("k"), "fp", lease=LEASE, retention=RETENTION))
    assert claim.acquired  # the refused claim had claimed nothing
    record = run_bounded(lambda: store.get(ident("k")))
    assert record is not None
    assert record.token == claim.token
    close(store)


def test_b20_one_key_from_loops_in_several_threads_runs_once_and_never_hangs(
    store_url: str,
) -> None:
    """An idempotent function called with one key from four threads at once, each running its
    own event loop, while the first call holds its loop: its effect runs once, the other calls
    fail closed at once (none waits out its `wait`, none raises a raw driver error), and a
    retry after the first call has finished replays its outcome."""
    store = open_async_store(store_url)
    started, finish = threading.Event(), threading.Event()
    effects: list[str] = []

    @idempotent(store, key="key", namespace="loops-at-once", lease=LEASE, wait=BOUND)
    async def charge(key: str) -> str:
        effects.append(key)
        started.set()
        await asyncio.to_thread(finish.wait, BOUND)  # its loop keeps running meanwhile
        return f"charged {key}"

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(run_bounded, lambda: charge("k"))
        assert started.wait(BOUND)
        others = [pool.submit(run_bounded, lambda: charge("k")) for _ in range(3)]
        errors = [other.exception(BOUND) for other in others]
        finish.set()
        assert first.result(BOUND) == "charged k"
    assert [type(error) for error in errors] == [StoreUnavailableError] * 3
    assert run_bounded(lambda: charge("k")) == "charged k"  # a replay, on a loop of its own
    assert effects == ["k"]
    close(store)


def test_b20_under_trio_the_store_raises_configuration_error(store_url: str) -> None:
    """Under trio (no asyncio event loop), a call raises `ConfigurationError` saying the store
    needs asyncio, not asyncio's or a driver's `RuntimeError`; the function does not run."""
    store = open_async_store(store_url)
    effects: list[str] = []

    @idempotent(store, key="key", namespace="loops-at-once-trio", lease=LEASE)
    async def charge(key: str) -> str:
        effects.append(key)
        return key

    async def main() -> None:
        with trio.fail_after(BOUND), pytest.raises(ConfigurationError, match="need asyncio"):
            await charge("k")

    trio.run(main)
    assert effects == []
    close(store)
