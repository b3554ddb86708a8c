"""The decorator on sync functions, against every store backend."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from retrysafe import (
    FencedError,
    IdempotencyError,
    Identity,
    InFlightError,
    InvalidKeyError,
    KeyMismatchError,
    ManualClock,
    Store,
)
from retrysafe._decorator import idempotent
from tests.functions.values import FALSY, CardDeclinedError


def test_b26_repeated_calls_run_once(store: Store) -> None:
    """A function called again with the same key and arguments runs once and replays."""
    runs: Counter[str] = Counter()

    @idempotent(store, key="order_id")
    def charge(order_id: str, amount: int) -> dict[str, Any]:
        runs[order_id] += 1
        return {"order": order_id, "charged": amount}

    first = [charge("o-1", 500) for _ in range(3)]
    assert first == [{"order": "o-1", "charged": 500}] * 3
    assert charge("o-2", 700) == {"order": "o-2", "charged": 700}
    assert runs == {"o-1": 1, "o-2": 1}


def test_b26_mismatch_raises_typed_error(store: Store) -> None:
    """The same key with other arguments raises KeyMismatchError, again and again, untouched."""
    runs: list[int] = []

    @idempotent(store, key="order_id")
    def charge(order_id: str, amount: int) -> int:
        runs.append(amount)
        return amount

    assert charge("o-1", 500) == 500
    for _ in range(2):
        with pytest.raises(KeyMismatchError) as caught:
            charge("o-1", 999)
        assert isinstance(caught.value, IdempotencyError)
    assert charge("o-1", 500) == 500
    assert runs == [500]


def test_b27_falsy_results_replay_equal_with_same_type(store: Store) -> None:
    """0, "", [], {}, None and False replay equal to the first result, with the same type."""
    runs: list[int] = []

    @idempotent(store, key="index", fingerprint=["index"])
    def produce(index: int, value: object) -> object:
        runs.append(index)
        return value

    for index, value in enumerate(FALSY):
        assert produce(index, value) == value
        replayed = produce(index, "ignored: not in the fingerprint")
        assert replayed == value
        assert type(replayed) is type(value)
    assert runs == list(range(len(FALSY)))


def test_b28_exception_releases_the_key(store: Store) -> None:
    """An exception releases the claim, so a retry with the same key runs again."""
    attempts: list[int] = []

    @idempotent(store, key="job")
    def flaky(job: str) -> str:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise ConnectionError("the payment provider timed out")
        return "done"

    with pytest.raises(ConnectionError):
        flaky("j-1")
    assert flaky("j-1") == "done"
    assert flaky("j-1") == "done"
    assert attempts == [0, 1]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_b40_a_call_interrupted_while_it_runs_keeps_its_key_until_its_lease_ends(
    store: Store, clock: ManualClock, interrupt: type[BaseException]
) -> None:
    """Ctrl+C, or a `SystemExit` (a worker told to stop), raised while the body runs leaves its
    outcome unknown: the claim is kept until its lease ends, so a retry at once is refused as
    in flight, and one after the lease takes the key over and runs (B16). An exception, the
    body's own answer, releases it instead (B28)."""
    runs: list[str] = []

    @idempotent(store, key="job", wait=0, namespace="b40")
    def charge(job: str) -> int:
        runs.append(job)
        if len(runs) == 1:
            raise interrupt
        return len(runs)

    with pytest.raises(interrupt):
        charge("j")
    with pytest.raises(InFlightError):
        charge("j")
    record = store.get(Identity("b40", "", "j"))
    assert record is not None
    assert record.state == "in_flight"
    clock.advance(31)  # the default lease, 30 s, has ended
    assert charge("j") == 2
    assert charge("j") == 2  # replayed
    assert runs == ["j", "j"]


def test_b28_final_exception_is_stored_and_replayed(store: Store) -> None:
    """An exception type chosen as final is stored and raised again without running."""
    runs: list[str] = []

    @idempotent(store, key="card", final_exceptions=(CardDeclinedError,))
    def charge(card: str) -> str:
        runs.append(card)
        raise CardDeclinedError(card, "insufficient funds")

    for _ in range(3):
        with pytest.raises(CardDeclinedError) as caught:
            charge("c-1")
        assert caught.value.args == ("c-1", "insufficient funds")
        assert caught.value.card == "c-1"
    assert runs == ["c-1"]


def test_b14_parallel_threads_run_the_body_once(store: Store) -> None:
    """Eight threads calling with one key run the body once and all get its result."""
    runs: list[int] = []
    barrier = threading.Barrier(8)

    @idempotent(store, key="key", wait=30)
    def slow(key: str) -> list[int]:
        runs.append(1)
        time.sleep(0.2)
        return [len(runs)]

    results: list[object] = [None] * 8

    def call(slot: int) -> None:
        barrier.wait()
        results[slot] = slow("k")

    threads = [threading.Thread(target=call, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert runs == [1]
    assert results == [[1]] * 8


def test_b15_wait_zero_raises_in_flight_error(store: Store) -> None:
    """With wait=0 a duplicate of a running call gets InFlightError at once, not a second run."""
    started, finish = threading.Event(), threading.Event()
    runs: list[str] = []

    @idempotent(store, key="key", wait=0)
    def blocking(key: str) -> str:
        runs.append(key)
        started.set()
        finish.wait(10)
        return "first"

    first = threading.Thread(target=blocking, args=("k",))
    first.start()
    assert started.wait(10)
    with pytest.raises(InFlightError) as caught:
        blocking("k")
    assert caught.value.retry_after > 0
    finish.set()
    first.join(10)
    assert blocking("k") == "first"
    assert runs == ["k"]


def wait_until_renewed(store: Store, identity: Identity, clock: ManualClock) -> None:
    """Wait (bounded) until the heartbeat has renewed the lease since the clock last moved."""
    deadline = time.monotonic() + 10
    while True:
        record = store.get(identity)
        assert record is not None
        if record.lease_expires_at > clock.now() + 0.25:  # renewed: a fresh 0.3 s lease
            return
        assert time.monotonic() < deadline, "the heartbeat never renewed the lease"
        time.sleep(0.01)


def test_b16_call_slower_than_its_lease_is_not_run_twice(store: Store, clock: ManualClock) -> None:
    """A live call that outlasts several leases keeps its key: the heartbeat renews it."""
    runs: list[int] = []
    started, finish = threading.Event(), threading.Event()

    @idempotent(store, key="key", lease=0.3, wait=0, namespace="b16")
    def slow(key: str) -> str:
        runs.append(1)
        started.set()
        finish.wait(10)
        return "slow result"

    first = threading.Thread(target=slow, args=("k",))
    first.start()
    assert started.wait(10)
    for _ in range(5):  # a whole second of clock time: more than three leases
        clock.advance(0.2)
        wait_until_renewed(store, Identity("b16", "", "k"), clock)
    with pytest.raises(InFlightError):
        slow("k")
    finish.set()
    first.join(10)
    assert slow("k") == "slow result"
    assert runs == [1]


def test_b17_stale_holder_cannot_overwrite_newer_outcome(store: Store, clock: ManualClock) -> None:
    """A call whose lease was taken over learns it was fenced; the newer outcome stands."""
    started, finish = threading.Event(), threading.Event()
    outcomes: list[object] = []

    @idempotent(store, key="key", lease=30)
    def work(key: str) -> str:
        if not started.is_set():
            started.set()
            finish.wait(10)  # the first holder stalls, as if its process hung
            return "stale"
        return "newer"

    def stalled() -> None:
        try:
            outcomes.append(work("k"))
        except FencedError as error:
            outcomes.append(error)

    first = threading.Thread(target=stalled)
    first.start()
    assert started.wait(10)
    clock.advance(31)  # its lease expires: a retry takes the key over
    assert work("k") == "newer"
    finish.set()
    first.join(10)
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], FencedError)
    assert work("k") == "newer"


def test_b21_retention_ends_and_the_key_runs_again(store: Store, clock: ManualClock) -> None:
    """After the retention period the same key is a new call."""
    runs: list[int] = []

    @idempotent(store, key="key", retention=60)
    def tick(key: str) -> int:
        runs.append(1)
        return len(runs)

    assert tick("k") == 1
    clock.advance(59)
    assert tick("k") == 1
    clock.advance(2)
    assert tick("k") == 2


def test_b8_scopes_keep_keys_apart(store: Store) -> None:
    """One key in two scopes runs once per scope and never replays across them."""

    @idempotent(store, key="key", scope=lambda tenant, key: tenant)
    def create(tenant: str, key: str) -> str:
        return f"{tenant}:{key}"

    assert create("acme", "k") == "acme:k"
    assert create("globex", "k") == "globex:k"
    assert create("acme", "k") == "acme:k"


@pytest.mark.parametrize("missing", [None, ""])
def test_b8_a_scope_function_that_returns_no_scope_fails_closed(
    store: Store, missing: str | None
) -> None:
    """A scope function with no scope for a call (a caller without a tenant) refuses the call
    with `InvalidKeyError` and runs nothing: such callers would otherwise share one scope, and
    one's key would replay another's outcome."""
    runs: list[str] = []

    @idempotent(store, key="key", scope=lambda user, key: user.get("tenant", missing))
    def charge(user: dict[str, str], key: str) -> str:
        runs.append(user["name"])
        return f"charged {user['name']}"

    for name in ("alice", "bob"):
        with pytest.raises(InvalidKeyError, match="scope"):
            charge({"name": name}, "k")
    assert runs == []
    assert charge({"name": "carol", "tenant": "acme"}, "k") == "charged carol"
