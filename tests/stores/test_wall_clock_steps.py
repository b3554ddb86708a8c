"""A step of the wall clock (an NTP step, a VM's clock sync) neither ends a live lease (B16) nor a
retention (B21) early on the memory store: its default clock reads the wall clock once, then
advances by the monotonic clock. The step is made the way the OS makes it: `time.time()` jumps,
`time.monotonic()` does not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from anyio.from_thread import start_blocking_portal

from retrysafe import Identity, State, Store, idempotent, open_async_store, open_store
from tests.stores.conftest import BlockingFacade

STEP = 3600.0
"""How far the wall clock steps forward: past every lease and retention the tests use."""


class SteppedWallClock:
    """`time.time()`, stepped forward on demand (what an NTP step does to a process)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + self.offset)

    def step(self, seconds: float = STEP) -> None:
        """Step the wall clock forward by `seconds`."""
        self.offset += seconds


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> SteppedWallClock:
    """The process's wall clock, steppable."""
    return SteppedWallClock(monkeypatch)


@pytest.fixture(params=["sync", "async"])
def memory(request: pytest.FixtureRequest) -> Iterator[Store]:
    """A memory store with its default clock, on the sync face or (blocking) the async face."""
    if request.param == "sync":
        store = open_store("memory://")
        yield store
        store.close()
        return
    with start_blocking_portal() as portal:
        facade = BlockingFacade(open_async_store("memory://"), portal)
        yield facade  # type: ignore[misc]
        facade.close()


def test_b16_a_wall_clock_step_does_not_end_a_live_lease(
    memory: Store, wall: SteppedWallClock
) -> None:
    """A duplicate claim after the wall clock stepped past the lease finds the claim in flight,
    and the holder can still complete: the lease is measured in elapsed time."""
    identity = Identity("test", "tenant", "step-lease")
    first = memory.claim(identity, "fp", lease=30, retention=600)
    assert first.acquired
    wall.step()
    duplicate = memory.claim(identity, "fp", lease=30, retention=600)
    assert not duplicate.acquired
    assert duplicate.record.state is State.IN_FLIGHT
    assert duplicate.record.token == first.record.token
    done = memory.complete(identity, first.record.token, b"outcome", retention=600)
    assert done.state is State.DONE


def test_b21_a_wall_clock_step_does_not_end_a_retention_early(
    memory: Store, wall: SteppedWallClock
) -> None:
    """A done record stays replayable after the wall clock stepped past its retention."""
    identity = Identity("test", "tenant", "step-retention")
    claim = memory.claim(identity, "fp", lease=30, retention=60)
    memory.complete(identity, claim.record.token, b"outcome", retention=60)
    wall.step()
    replay = memory.claim(identity, "fp", lease=30, retention=60)
    assert not replay.acquired
    assert replay.record.outcome == b"outcome"


def test_b16_the_decorator_runs_once_across_a_wall_clock_step(wall: SteppedWallClock) -> None:
    """Two calls with one key on the memory store, the wall clock stepping past the lease while
    the first runs: the effect runs once and both calls get its result."""
    store = open_store("memory://")
    running, release = threading.Event(), threading.Event()
    runs: list[str] = []

    @idempotent(store=store, key=lambda amount: "order-1")
    def charge(amount: int) -> str:
        runs.append(threading.current_thread().name)
        running.set()
        release.wait(10)
        return threading.current_thread().name

    results: dict[str, object] = {}

    def call() -> None:
        try:
            results[threading.current_thread().name] = charge(100)
        except Exception as error:  # reported in the assertion
            results[threading.current_thread().name] = error

    first = threading.Thread(target=call, name="first")
    first.start()
    assert running.wait(10)
    wall.step()
    second = threading.Thread(target=call, name="second")
    second.start()
    time.sleep(0.3)  # the duplicate is waiting for the first call's outcome
    release.set()
    first.join(10)
    second.join(10)
    store.close()
    assert runs == ["first"]
    assert results == {"first": "first", "second": "first"}
