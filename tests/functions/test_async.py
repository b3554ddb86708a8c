"""The decorator on async functions, against every async store backend."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import anyio
import pytest

from retrysafe import (
    AsyncStore,
    FencedError,
    IdempotencyError,
    Identity,
    InFlightError,
    KeyMismatchError,
    ManualClock,
)
from retrysafe._decorator import idempotent
from retrysafe.stores.memory import AsyncMemoryStore
from tests.functions.values import FALSY, CardDeclinedError

pytestmark = pytest.mark.anyio


async def test_b26_repeated_calls_run_once(astore: AsyncStore) -> None:
    """An async function called again with the same key and arguments runs once and replays."""
    runs: Counter[str] = Counter()

    @idempotent(astore, key="order_id")
    async def charge(order_id: str, amount: int) -> dict[str, object]:
        runs[order_id] += 1
        return {"order": order_id, "charged": amount}

    for _ in range(3):
        assert await charge("o-1", 500) == {"order": "o-1", "charged": 500}
    assert await charge("o-2", 700) == {"order": "o-2", "charged": 700}
    assert runs == {"o-1": 1, "o-2": 1}


async def test_b26_mismatch_raises_typed_error(astore: AsyncStore) -> None:
    """The same key with other arguments raises KeyMismatchError and leaves the record alone."""
    runs: list[int] = []

    @idempotent(astore, key="order_id")
    async def charge(order_id: str, amount: int) -> int:
        runs.append(amount)
        return amount

    assert await charge("o-1", 500) == 500
    with pytest.raises(KeyMismatchError) as caught:
        await charge("o-1", 999)
    assert isinstance(caught.value, IdempotencyError)
    assert await charge("o-1", 500) == 500
    assert runs == [500]


async def test_b27_falsy_results_replay_equal_with_same_type(astore: AsyncStore) -> None:
    """Falsy results replay equal to the first, with the same type."""
    runs: list[int] = []

    @idempotent(astore, key="index", fingerprint=["index"])
    async def produce(index: int, value: object) -> object:
        runs.append(index)
        return value

    for index, value in enumerate(FALSY):
        assert await produce(index, value) == value
        replayed = await produce(index, "ignored")
        assert replayed == value
        assert type(replayed) is type(value)
    assert runs == list(range(len(FALSY)))


async def test_b28_exception_releases_the_key(astore: AsyncStore) -> None:
    """An exception releases the claim, so a retry runs again."""
    attempts: list[int] = []

    @idempotent(astore, key="job")
    async def flaky(job: str) -> str:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise ConnectionError("timed out")
        return "done"

    with pytest.raises(ConnectionError):
        await flaky("j-1")
    assert await flaky("j-1") == "done"
    assert await flaky("j-1") == "done"
    assert attempts == [0, 1]


async def test_b28_final_exception_is_stored_and_replayed(astore: AsyncStore) -> None:
    """An exception type chosen as final is stored and raised again without running."""
    runs: list[str] = []

    @idempotent(astore, key="card", final_exceptions=(CardDeclinedError,))
    async def charge(card: str) -> str:
        runs.append(card)
        raise CardDeclinedError(card, "insufficient funds")

    for _ in range(3):
        with pytest.raises(CardDeclinedError) as caught:
            await charge("c-1")
        assert caught.value.args == ("c-1", "insufficient funds")
    assert runs == ["c-1"]


@pytest.mark.parametrize("cancel", ["task-group", "asyncio-timeout"])
async def test_b40_a_call_cancelled_while_it_runs_keeps_its_key_until_its_lease_ends(
    astore: AsyncStore, clock: ManualClock, cancel: str
) -> None:
    """A call cancelled while its body runs (by a task group, or an `asyncio.timeout` around
    it) has an unknown outcome: the body may have made its effect and lost only the answer.
    Its claim is kept, not released: a retry at once is refused as in flight, and only once
    the lease has ended does a retry take the key over and run (B16). Before, the cancellation
    released the claim and the retry ran the body a second time at once."""
    runs: list[str] = []
    started = anyio.Event()

    async def charge(key: str) -> int:
        runs.append(key)
        started.set()
        if len(runs) == 1:
            await anyio.sleep_forever()  # waiting for the payment provider's answer, say
        return len(runs)

    hasty = idempotent(astore, key="key", wait=0, namespace="b40")(charge)
    if cancel == "task-group":
        async with anyio.create_task_group() as group:
            group.start_soon(hasty, "k")
            await started.wait()
            group.cancel_scope.cancel()
    else:

        async def time_out_once_started(timeout: asyncio.Timeout) -> None:
            await started.wait()
            timeout.reschedule(asyncio.get_running_loop().time())

        async def call_with_a_timeout() -> None:
            async with asyncio.timeout(None) as timeout:
                watcher = asyncio.create_task(time_out_once_started(timeout))
                try:
                    await hasty("k")
                finally:
                    await watcher

        with pytest.raises(TimeoutError):
            await call_with_a_timeout()
    with pytest.raises(InFlightError):
        await hasty("k")
    record = await astore.get(Identity("b40", "", "k"))
    assert record is not None
    assert record.state == "in_flight"
    assert runs == ["k"]
    clock.advance(31)  # the default lease, 30 s, has ended
    assert await hasty("k") == 2
    assert await hasty("k") == 2  # replayed
    assert runs == ["k", "k"]


class _SuspendingMemoryStore(AsyncMemoryStore):
    """The memory store, saying its calls may wait, as every networked store's do."""

    suspends = True


async def test_b40_a_call_whose_coroutine_is_closed_mid_body_keeps_its_key() -> None:
    """A call's coroutine closed while its body waits (a pending task garbage-collected, or
    `close()`): `GeneratorExit` interrupts it, and the claim is kept without waiting for
    anything, which a closing coroutine cannot do. Before, finishing it waited, and closing it
    raised `RuntimeError("coroutine ignored GeneratorExit")`."""
    store = _SuspendingMemoryStore()
    runs: list[str] = []

    @idempotent(store, key="key", wait=0, namespace="b40-closed")
    async def charge(key: str) -> None:
        runs.append(key)
        await asyncio.Event().wait()

    call = charge("k")
    claiming = call.send(None)  # the claim, in a task of its own: its store call may wait
    await asyncio.wait((claiming,))
    call.send(None)  # starts the body, and stops at its first wait
    call.close()
    with pytest.raises(InFlightError):
        await charge("k")
    assert runs == ["k"]


async def test_b28_a_call_whose_coroutine_is_closed_in_its_claim_releases_it() -> None:
    """A call's coroutine closed while its claim is in the store: the claim lands, and is
    released then, since the body never ran; the retry runs it."""
    store = _SuspendingMemoryStore()
    runs: list[str] = []

    @idempotent(store, key="key", wait=0, namespace="b28-closed")
    async def charge(key: str) -> int:
        runs.append(key)
        return len(runs)

    running = asyncio.all_tasks()
    call = charge("k")
    call.send(None)  # the claim, in a task of its own, under way
    call.close()
    (claim,) = asyncio.all_tasks() - running
    await claim
    (release,) = asyncio.all_tasks() - running - {claim}
    await release
    assert await store.get(Identity("b28-closed", "", "k")) is None
    assert await charge("k") == 1
    assert runs == ["k"]


@pytest.mark.parametrize("renewing", [False, True], ids=["short", "renewing"])
async def test_b19_an_asyncio_cancel_as_the_body_returns_still_stores_the_outcome(
    astore: AsyncStore, renewing: bool
) -> None:
    """asyncio's own cancellation (`task.cancel()`: `asyncio.wait_for`, `asyncio.timeout`, a
    TaskGroup), which an anyio shield does not hold off, landing as the body returns, while the
    renewal stops or the outcome is stored: the caller is cancelled, the outcome is stored all
    the same, and the retry replays it (it got request-in-flight, and once the lease ended ran
    the body a second time)."""
    runs: list[str] = []

    @idempotent(astore, key="key", lease=0.3, wait=0)
    async def charge(key: str) -> int:
        runs.append(key)
        if renewing:
            await anyio.sleep(0.2)  # past lease / 3: a task renews the lease by now
        me = asyncio.current_task()
        assert me is not None
        asyncio.get_running_loop().call_soon(me.cancel)  # lands at the finish's first wait
        return len(runs)

    first = asyncio.create_task(charge("k"))
    try:
        assert await first == 1  # a store whose calls never wait finishes before it lands
    except asyncio.CancelledError:
        assert first.cancelled()
    assert await charge("k") == 1
    assert runs == ["k"]


class _SwallowingClaims:
    """A store whose `claim` returns its reply even when its task was cancelled meanwhile, as
    redis-py 8 on a Redis Cluster and aiomysql sometimes do (a `task.cancel()` landing inside a
    command)."""

    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self.claimed = asyncio.Event()
        self.reply = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def claim(self, *args: object, **kwargs: object) -> object:
        """Claim; the first claim's reply then waits for `reply`, swallowing a cancellation."""
        reply = await self._store.claim(*args, **kwargs)  # type: ignore[arg-type]
        if not self.claimed.is_set():
            self.claimed.set()
            with contextlib.suppress(asyncio.CancelledError):  # the reply came back anyway
                await self.reply.wait()
        return reply


async def test_b28_a_cancel_swallowed_by_the_store_during_the_claim_runs_nothing(
    astore: AsyncStore,
) -> None:
    """A caller cancelled while its claim is in the store, by a client that returns the reply
    anyway: the call is cancelled all the same, the body does not run, and the claim is
    released, so the retry runs it. Before, the body ran for a caller that was cancelled (its
    `asyncio.timeout` then ignored)."""
    swallowing = _SwallowingClaims(astore)
    runs: list[str] = []

    @idempotent(swallowing, key="key", wait=0)  # type: ignore[arg-type]
    async def charge(key: str) -> int:
        runs.append(key)
        return len(runs)

    first = asyncio.create_task(charge("k"))
    await asyncio.wait_for(swallowing.claimed.wait(), 5)
    first.cancel()
    swallowing.reply.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert runs == []
    assert await charge("k") == 1
    assert runs == ["k"]


async def test_b28_every_call_cancelled_while_it_runs_ends_cancelled(astore: AsyncStore) -> None:
    """200 calls, each cancelled a few microseconds after it started (in its claim, its body
    or its completion, on the real store): every one whose cancellation was requested before
    it ended raises `CancelledError`. On a Redis Cluster 103 of 400 such calls ran their body
    and returned as if nothing had cancelled them, on MariaDB 20, before the flow looked for a
    cancellation its store client had swallowed."""
    runs: list[str] = []

    @idempotent(astore, key="key", wait=0)
    async def charge(key: str) -> int:
        runs.append(key)
        return 1

    returned = []
    for n in range(200):
        call = asyncio.create_task(charge(f"k{n}"))
        await asyncio.sleep(0.00003 * (n % 20))  # lands in the claim, the body or the completion
        if call.cancel():
            await asyncio.wait((call,), timeout=5)
            if not call.cancelled():
                returned.append(n)
    assert returned == []


class _SwallowingWaits:
    """A store whose first `wait` returns (as a wait that timed out) even when its task was
    cancelled meanwhile, as a client that swallows a cancellation does."""

    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def wait(self, identity: Identity, timeout: float) -> object:
        """Wait; the first wait waits to be cancelled, swallows it and says it timed out."""
        if self.waiting.is_set():
            return await self._store.wait(identity, timeout=timeout)
        self.waiting.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        return None


async def test_b28_a_cancel_swallowed_by_the_store_while_waiting_ends_the_wait(
    astore: AsyncStore,
) -> None:
    """A duplicate cancelled while it waits for the call in flight, by a client that returns
    anyway: it is cancelled at once, not after claiming and waiting again for up to `wait`
    seconds, and the call in flight finishes as it would."""
    swallowing = _SwallowingWaits(astore)
    entered, finish = asyncio.Event(), asyncio.Event()

    @idempotent(swallowing, key="key", wait=30)  # type: ignore[arg-type]
    async def charge(key: str) -> str:
        entered.set()
        await finish.wait()
        return key

    first = asyncio.create_task(charge("k"))
    await asyncio.wait_for(entered.wait(), 5)
    duplicate = asyncio.create_task(charge("k"))
    await asyncio.wait_for(swallowing.waiting.wait(), 5)
    duplicate.cancel()
    await asyncio.wait((duplicate,), timeout=5)
    assert duplicate.cancelled()
    finish.set()
    assert await first == "k"


async def test_b14_parallel_tasks_run_the_body_once(astore: AsyncStore) -> None:
    """Eight tasks calling with one key run the body once and all get its result."""
    runs: list[int] = []

    @idempotent(astore, key="key", wait=30)
    async def slow(key: str) -> list[int]:
        runs.append(1)
        await anyio.sleep(0.2)
        return [len(runs)]

    results = await asyncio.gather(*(slow("k") for _ in range(8)))
    assert runs == [1]
    assert results == [[1]] * 8


async def test_b15_wait_zero_raises_in_flight_error(astore: AsyncStore) -> None:
    """With wait=0 a duplicate of a running call gets InFlightError at once."""
    started, finish = anyio.Event(), anyio.Event()

    @idempotent(astore, key="key", wait=0)
    async def blocking(key: str) -> str:
        started.set()
        await finish.wait()
        return "first"

    async with anyio.create_task_group() as group:
        group.start_soon(blocking, "k")
        await started.wait()
        with pytest.raises(InFlightError):
            await blocking("k")
        finish.set()
    assert await blocking("k") == "first"


async def wait_until_renewed(astore: AsyncStore, identity: Identity, clock: ManualClock) -> None:
    """Wait (bounded) until the heartbeat task has renewed the lease since the clock moved."""
    with anyio.fail_after(10):
        while True:
            record = await astore.get(identity)
            assert record is not None
            if record.lease_expires_at > clock.now() + 0.25:
                return
            await anyio.sleep(0.01)


async def test_b16_call_slower_than_its_lease_is_not_run_twice(
    astore: AsyncStore, clock: ManualClock
) -> None:
    """A live async call that outlasts several leases keeps its key: its heartbeat task renews."""
    runs: list[int] = []
    started, finish = anyio.Event(), anyio.Event()

    @idempotent(astore, key="key", lease=0.3, wait=0, namespace="b16")
    async def slow(key: str) -> str:
        runs.append(1)
        started.set()
        await finish.wait()
        return "slow result"

    async with anyio.create_task_group() as group:
        group.start_soon(slow, "k")
        await started.wait()
        for _ in range(5):  # a whole second of clock time: more than three leases
            clock.advance(0.2)
            await wait_until_renewed(astore, Identity("b16", "", "k"), clock)
        with pytest.raises(InFlightError):
            await slow("k")
        finish.set()
    assert await slow("k") == "slow result"
    assert runs == [1]


async def test_b17_stale_holder_cannot_overwrite_newer_outcome(
    astore: AsyncStore, clock: ManualClock
) -> None:
    """A task whose lease was taken over gets FencedError; the newer outcome stands."""
    started, finish = anyio.Event(), anyio.Event()
    outcomes: list[object] = []

    @idempotent(astore, key="key", lease=30)
    async def work(key: str) -> str:
        if not started.is_set():
            started.set()
            await finish.wait()
            return "stale"
        return "newer"

    async def stalled() -> None:
        try:
            outcomes.append(await work("k"))
        except FencedError as error:
            outcomes.append(error)

    async with anyio.create_task_group() as group:
        group.start_soon(stalled)
        await started.wait()
        clock.advance(31)
        assert await work("k") == "newer"
        finish.set()
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], FencedError)
    assert await work("k") == "newer"
