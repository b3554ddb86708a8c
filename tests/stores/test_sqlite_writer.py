"""The async SQLite store's writer thread: loops, group commit, cancellation, close, crash."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from retrysafe import FencedError, Identity, ManualClock, StoreError
from retrysafe.stores.sqlite import AsyncSQLiteStore

LEASE = 30.0
RETENTION = 3600.0


def ident(key: str = "key-1") -> Identity:
    """An identity in the test namespace."""
    return Identity("test", "tenant-a", key)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a database file that does not exist yet."""
    return tmp_path / "store.db"


@contextlib.contextmanager
def write_lock_held(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock from another connection until it is rolled back."""
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        yield blocker
    finally:
        blocker.close()


def wait_until(condition: Callable[[], bool]) -> None:
    """Return once `condition()` holds; fail after 10 seconds."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


async def await_until(condition: Callable[[], bool]) -> None:
    """Return once `condition()` holds, letting the loop run meanwhile; fail after 10 seconds."""
    await anyio.to_thread.run_sync(wait_until, condition)


def queued(store: AsyncSQLiteStore) -> int:
    """How many writes wait in the writer thread's queue, not yet taken (white box)."""
    thread = store._runner._writer._thread
    return 0 if thread is None else thread.jobs.qsize()


def writer_thread(store: AsyncSQLiteStore) -> Any:
    """The store's writer thread, or None (white box)."""
    return store._runner._writer._thread


def committing(store: AsyncSQLiteStore) -> bool:
    """Whether the writer thread is committing a batch (white box): once there, it takes
    nothing more from the queue until that batch is answered."""
    thread = writer_thread(store)
    return thread is not None and thread.committing


async def writer_taken_one(store: AsyncSQLiteStore) -> None:
    """Wait until the writer thread has taken the only queued write and is committing it alone
    (it then waits on the lock): writes queued after this go into a later batch. An empty
    queue alone is not enough: the writer drains the queue into its batch after taking the
    first job, so a write queued in between would join it."""
    await anyio.wait_all_tasks_blocked()
    await await_until(lambda: queued(store) == 0 and committing(store))


def rows(db_path: Path) -> dict[str, str]:
    """The stored records' keys and states, read with a plain connection."""
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        return {
            key.decode(): state
            for key, state in connection.execute("SELECT key, state FROM retrysafe_records")
        }


def test_b7_one_winner_per_key_among_tasks_on_four_event_loops(db_path: Path) -> None:
    """Sixteen tasks on each of four event loops in four threads share one store: each key has
    exactly one winner, its outcome is the one every later claim replays, from every loop."""
    store = AsyncSQLiteStore(db_path, clock=ManualClock())
    keys = [f"k{n}" for n in range(8)]
    barrier = threading.Barrier(4, timeout=30)
    won: list[tuple[str, str]] = []
    replays: list[bytes] = []

    async def contend(loop_id: int, task_id: int) -> None:
        key = keys[(loop_id * 16 + task_id) % len(keys)]
        claim = await store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)
        if claim.acquired:
            won.append((key, f"{loop_id}/{task_id}"))
            outcome = f"{loop_id}/{task_id}".encode()
            await store.complete(ident(key), claim.token, outcome, retention=RETENTION)

    async def loop_main(loop_id: int) -> None:
        async with anyio.create_task_group() as group:
            for task_id in range(16):
                group.start_soon(contend, loop_id, task_id)
        barrier.wait()  # every loop has completed its keys before any replays
        for key in keys:
            claim = await store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)
            assert not claim.acquired
            replays.append(claim.record.outcome or b"")

    def run_loop(loop_id: int) -> None:
        barrier.wait()
        anyio.run(loop_main, loop_id)

    errors: list[BaseException] = []

    def thread_main(loop_id: int) -> None:
        try:
            run_loop(loop_id)
        except BaseException as error:  # reported below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=thread_main, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(key for key, _ in won) == keys
    winners = dict(won)
    assert sorted(replays) == sorted(winners[key].encode() for key in keys for _ in range(4))
    anyio.run(store.aclose)


def test_b17_concurrent_writes_commit_together_each_with_its_own_outcome(db_path: Path) -> None:
    """Writes queued while the writer waits for the lock commit in one group afterwards; each
    caller gets its own result, and a fenced write fails alone without undoing the others."""

    async def scenario() -> dict[str, object]:
        store = AsyncSQLiteStore(db_path, clock=ManualClock(), timeout=30)
        held = await store.claim(ident("held"), "fp", lease=LEASE, retention=RETENTION)
        results: dict[str, object] = {}

        async def record(name: str, call: Callable[[], Any]) -> None:
            try:
                results[name] = await call()
            except Exception as error:
                results[name] = error

        with write_lock_held(db_path) as blocker:
            async with anyio.create_task_group() as group:
                group.start_soon(record, "first", lambda: store.delete(ident("absent")))
                await writer_taken_one(store)
                group.start_soon(
                    record,
                    "fenced",
                    lambda: store.complete(ident("held"), "not-the-token", b"x", retention=60),
                )
                group.start_soon(
                    record,
                    "complete",
                    lambda: store.complete(ident("held"), held.token, b"ok", retention=60),
                )
                for n in range(50):
                    group.start_soon(
                        record,
                        f"claim{n}",
                        lambda n=n: store.claim(
                            ident(f"k{n}"), "fp", lease=LEASE, retention=RETENTION
                        ),
                    )
                await anyio.wait_all_tasks_blocked()
                assert queued(store) == 52  # all waiting behind the first, none answered
                assert results == {}
                blocker.execute("ROLLBACK")
        await store.aclose()
        return results

    results = anyio.run(scenario)
    assert results["first"] is False
    assert isinstance(results["fenced"], FencedError)
    assert getattr(results["complete"], "outcome", None) == b"ok"
    assert all(getattr(results[f"claim{n}"], "acquired", False) for n in range(50))
    stored = rows(db_path)
    assert stored["held"] == "done"
    assert sum(state == "in_flight" for state in stored.values()) == 50


@pytest.mark.parametrize("how", ["anyio", "asyncio"])
def test_cancelled_write_is_applied_and_then_the_caller_sees_the_cancellation(
    db_path: Path, how: str
) -> None:
    """A claim cancelled while the writer runs it, and one cancelled while still queued, each
    wait for the writer to finish it, take effect, and then raise the cancellation."""

    async def scenario() -> tuple[list[bool], list[str]]:
        store = AsyncSQLiteStore(db_path, clock=ManualClock(), timeout=30)
        await store.create_schema()
        finished: list[str] = []
        cancelled: list[bool] = []

        async def claim(key: str, scope: anyio.CancelScope) -> None:
            with scope:
                await store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)
                finished.append(key)  # never: the caller is cancelled before its answer
            cancelled.append(scope.cancelled_caught)

        async def claim_task(key: str) -> None:
            try:
                await store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)
                finished.append(key)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        with write_lock_held(db_path) as blocker:
            if how == "anyio":
                scopes = {"running": anyio.CancelScope(), "queued": anyio.CancelScope()}
                async with anyio.create_task_group() as group:
                    group.start_soon(claim, "running", scopes["running"])
                    await writer_taken_one(store)
                    group.start_soon(claim, "queued", scopes["queued"])
                    await anyio.wait_all_tasks_blocked()
                    assert queued(store) == 1
                    for scope in scopes.values():
                        scope.cancel()
                    await anyio.wait_all_tasks_blocked()
                    assert cancelled == []  # both still wait for their writes
                    blocker.execute("ROLLBACK")
            else:
                running = asyncio.create_task(claim_task("running"))
                await writer_taken_one(store)
                waiting = asyncio.create_task(claim_task("queued"))
                await anyio.wait_all_tasks_blocked()
                assert queued(store) == 1
                running.cancel()
                waiting.cancel()
                await anyio.wait_all_tasks_blocked()
                running.cancel()  # a second cancellation does not cut the wait short either
                await anyio.wait_all_tasks_blocked()
                assert not running.done()
                assert not waiting.done()
                blocker.execute("ROLLBACK")
                for task in (running, waiting):
                    with pytest.raises(asyncio.CancelledError):
                        await task
        await store.aclose()
        return cancelled, finished

    cancelled, finished = anyio.run(scenario)
    assert cancelled == [True, True]
    assert finished == []
    assert rows(db_path) == {"running": "in_flight", "queued": "in_flight"}


def test_aclose_answers_queued_writes_then_closes(db_path: Path) -> None:
    """aclose while writes wait in the queue lets them commit and answer, then closes every
    connection (SQLite removes the WAL file); later calls raise StoreError."""

    async def scenario() -> list[bool]:
        store = AsyncSQLiteStore(db_path, clock=ManualClock(), timeout=30)
        await store.create_schema()
        acquired: list[bool] = []
        closed = anyio.Event()

        async def claim(key: str) -> None:
            claim = await store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)
            acquired.append(claim.acquired)

        async def close() -> None:
            await store.aclose()
            closed.set()

        with write_lock_held(db_path) as blocker:
            async with anyio.create_task_group() as group:
                group.start_soon(claim, "k0")
                await writer_taken_one(store)
                for n in range(1, 6):
                    group.start_soon(claim, f"k{n}")
                await anyio.wait_all_tasks_blocked()
                group.start_soon(close)
                await anyio.wait_all_tasks_blocked()
                assert not closed.is_set()
                assert acquired == []
                blocker.execute("ROLLBACK")
        assert closed.is_set()
        with pytest.raises(StoreError, match="closed"):
            await store.claim(ident("late"), "fp", lease=LEASE, retention=RETENTION)
        with pytest.raises(StoreError, match="closed"):
            await store.get(ident("k0"))
        await store.aclose()  # a second aclose is harmless
        return acquired

    assert anyio.run(scenario) == [True] * 6
    assert len(rows(db_path)) == 6
    assert not Path(f"{db_path}-wal").exists()


class WriterCrash(BaseException):
    """An error no write primitive raises: it kills the writer thread."""


def test_a_crashed_writer_fails_its_callers_and_the_next_call_starts_another(
    db_path: Path,
) -> None:
    """When the writer thread dies, every write it held gets a StoreError (none is applied,
    none hangs), and the next write runs on a new thread."""

    def crash(connection: sqlite3.Connection, now: float) -> None:
        raise WriterCrash

    async def scenario() -> None:
        store = AsyncSQLiteStore(db_path, clock=ManualClock(), timeout=30)
        await store.create_schema()
        outcomes: dict[str, object] = {}

        async def run(name: str, call: Callable[[], Any]) -> None:
            try:
                outcomes[name] = await call()
            except StoreError as error:
                outcomes[name] = error

        with write_lock_held(db_path) as blocker:
            async with anyio.create_task_group() as group:
                group.start_soon(run, "first", lambda: store.delete(ident("absent")))
                await writer_taken_one(store)
                first_thread = writer_thread(store)
                group.start_soon(run, "crash", lambda: store._runner.write(crash))
                group.start_soon(
                    run,
                    "claim",
                    lambda: store.claim(ident(), "fp", lease=LEASE, retention=RETENTION),
                )
                await anyio.wait_all_tasks_blocked()
                assert queued(store) == 2
                blocker.execute("ROLLBACK")
        assert outcomes["first"] is False
        for name in ("crash", "claim"):
            error = outcomes[name]
            assert isinstance(error, StoreError)
            assert "writer thread stopped" in str(error)
            assert isinstance(error.__cause__, WriterCrash)
        first_thread.join(10)
        assert not first_thread.is_alive()
        assert await store.get(ident()) is None  # the failed batch left nothing behind
        assert (await store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)).acquired
        assert writer_thread(store) is not first_thread
        await store.aclose()

    anyio.run(scenario)


def test_a_caller_off_asyncio_waits_for_the_writer_in_a_worker_thread(db_path: Path) -> None:
    """The path a trio caller takes: threads queue writes and wait on an event; each gets its
    own outcome, in one group with the event-loop callers' writes."""

    async def scenario() -> list[bool]:
        store = AsyncSQLiteStore(db_path, clock=ManualClock())
        runner = store._runner
        table = store.table
        acquired: list[bool] = []

        async def claim(key: str) -> None:
            claim = await anyio.to_thread.run_sync(
                runner._call,
                lambda connection, now: table.claim(
                    connection, ident(key), "fp", now=now, lease=LEASE, retention=RETENTION
                ),
            )
            acquired.append(claim.acquired)

        async with anyio.create_task_group() as group:
            for n in range(8):
                group.start_soon(claim, f"k{n % 4}")
        await store.aclose()
        return acquired

    assert sorted(anyio.run(scenario)) == [False] * 4 + [True] * 4
