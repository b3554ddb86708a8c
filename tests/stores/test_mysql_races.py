"""The MySQL/MariaDB store under contention: one winner among processes, threads and tasks,
InnoDB deadlocks retried without running anything twice, lock waits bounded, takeovers raced.

What is proven here is InnoDB's behaviour, not assumed: the claim is one
`INSERT ... ON DUPLICATE KEY UPDATE`, and the tests drive it into the interleavings that
deadlock (claims waiting on a key whose holding transaction rolls back) and count the
deadlocks the server reports.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pymysql
import pytest

from retrysafe import Identity, ManualClock, State, Store, StoreUnavailableError, open_store
from retrysafe.stores.mysql import AsyncMySQLStore
from tests.stores.conftest import OpenStore
from tests.stores.test_mysql import (
    BOUND,
    LEASE,
    RETENTION,
    admin,
    eventually,
    ident,
    query,
    table_url,
    tables,
    with_options,
)

pytestmark = pytest.mark.mysql

__all__ = ["table_url", "tables"]  # fixtures, shared with test_mysql.py

WORKERS, THREADS = 5, 10  # 50 concurrent claims from 5 processes


def deadlocks(mysql_url: str) -> int:
    """The server's count of deadlocks InnoDB has broken since it started."""
    ((_, value),) = query(mysql_url, "SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
    return int(value)


def waiting_on(mysql_url: str, table: str, statement: str) -> int:
    """How many connections are running `statement` on `table` (waiting for a lock, here)."""
    rows = query(
        mysql_url,
        "SELECT COUNT(*) FROM information_schema.processlist"
        " WHERE info LIKE %s AND id <> CONNECTION_ID()",
        f"%{statement} `{table}`%",
    )
    return int(rows[0][0])


def run_once(store: Store, identity: Identity, runs: Callable[[], int]) -> bytes:
    """What a caller does with a key: claim it; the winner runs the effect (`runs`) and stores
    its outcome, everyone else waits for that outcome. Return the outcome."""
    claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
    if claim.acquired:
        outcome = f"run {runs()}".encode()
        store.complete(identity, claim.token, outcome, retention=RETENTION)
        return outcome
    record = claim.record
    if record.state is State.IN_FLIGHT:
        record = store.wait(identity, timeout=BOUND)  # type: ignore[assignment]
    assert record is not None
    assert record.state is State.DONE
    return record.outcome or b""


# --- one winner ------------------------------------------------------------------------------


def _claim_in_child(
    url: str, keys: list[str], seed: int, *, barrier: Any, runs: Any, results: Any
) -> None:
    """Run in a child process: THREADS threads on one store run every key (shuffled) at once."""
    store = open_store(url)

    def run() -> int:
        with runs.get_lock():
            runs.value += 1
            return int(runs.value)

    try:
        store.get(ident("warm-up"))  # pool and schema ready before the race starts
        barrier.wait(timeout=BOUND)
        start = threading.Barrier(THREADS)

        def contend(index: int) -> list[tuple[str, bytes]]:
            order = list(keys)
            random.Random(seed * THREADS + index).shuffle(order)
            start.wait(timeout=BOUND)
            return [(key, run_once(store, ident(key), run)) for key in order]

        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            results.put([outcome for got in pool.map(contend, range(THREADS)) for outcome in got])
    finally:
        store.close()


def test_b7_b14_one_run_among_50_concurrent_claims_from_5_processes(table_url: str) -> None:
    """Five OS processes of ten threads each run the same keys at once: each key's effect runs
    exactly once, and all fifty callers get that one outcome."""
    # Closed at once: a store left to the collector can be collected mid-test, on its own
    # pool's worker thread, which then fails to join itself.
    with contextlib.closing(open_store(table_url)) as store:
        store.create_schema()  # type: ignore[attr-defined]
    keys = [f"race-{index}" for index in range(4)]
    context = multiprocessing.get_context("spawn")
    barrier, runs, results = context.Barrier(WORKERS), context.Value("i", 0), context.Queue()
    children = [
        context.Process(
            target=_claim_in_child,
            args=(table_url, keys, seed),
            kwargs={"barrier": barrier, "runs": runs, "results": results},
        )
        for seed in range(WORKERS)
    ]
    for child in children:
        child.start()
    try:
        outcomes = [outcome for _ in children for outcome in results.get(timeout=90)]
    finally:
        for child in children:
            child.join(timeout=BOUND)
    assert [child.exitcode for child in children] == [0] * WORKERS
    assert runs.value == len(keys)
    for key in keys:
        on_key = [outcome for k, outcome in outcomes if k == key]
        assert len(on_key) == WORKERS * THREADS
        assert len(set(on_key)) == 1


def test_b7_one_winner_among_50_threads_on_one_store(open_face: OpenStore, table_url: str) -> None:
    """Fifty threads sharing one store (and its ten connections) claim one key: one winner, and
    every loser got the winner's record."""
    store = open_face(table_url)
    store.get(ident("warm-up"))
    barrier = threading.Barrier(50)

    def contend(_: int) -> tuple[bool, str]:
        barrier.wait(timeout=BOUND)
        claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        return claim.acquired, claim.token

    with ThreadPoolExecutor(max_workers=50) as pool:
        claims = list(pool.map(contend, range(50)))
    winners = [token for acquired, token in claims if acquired]
    assert len(winners) == 1
    assert {token for _, token in claims} == set(winners)


def test_b7_one_winner_among_50_tasks(table_url: str) -> None:
    """Fifty tasks on one event loop claiming one key through one async store: one winner."""

    async def main() -> list[bool]:
        store = AsyncMySQLStore.from_url(table_url)
        results: list[bool] = []
        try:
            await store.create_schema()

            async def contend() -> None:
                claim = await store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
                results.append(claim.acquired)

            async with anyio.create_task_group() as group:
                for _ in range(50):
                    group.start_soon(contend)
        finally:
            await store.aclose()
        return results

    results = anyio.run(main)
    assert len(results) == 50
    assert results.count(True) == 1


def test_b16_one_takeover_among_20_threads(open_face: OpenStore, table_url: str) -> None:
    """Twenty threads retrying a key whose lease expired: exactly one takes it over."""
    clock = ManualClock()
    store = open_face(table_url, clock)
    stale = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(LEASE + 1)
    barrier = threading.Barrier(20)

    def contend(_: int) -> tuple[bool, bool, str]:
        barrier.wait(timeout=BOUND)
        claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        return claim.acquired, claim.taken_over, claim.token

    with ThreadPoolExecutor(max_workers=20) as pool:
        claims = list(pool.map(contend, range(20)))
    winners = [(taken_over, token) for acquired, taken_over, token in claims if acquired]
    assert len(winners) == 1
    assert winners[0][0] is True
    assert winners[0][1] != stale.token
    assert {token for _, _, token in claims} == {winners[0][1]}


# --- deadlocks and lock waits ----------------------------------------------------------------


@contextlib.contextmanager
def held_key(mysql_url: str, table: str, identity: Identity, clock: ManualClock) -> Iterator[Any]:
    """Insert `identity`'s record in a transaction left open (as transactional mode does while
    its handler runs), done with outcome b"theirs"; yield the connection to end it."""
    conn = admin(mysql_url)
    now = clock.now()
    try:
        with conn.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(
                f"INSERT INTO `{table}` (id, namespace, scope, `key`, fingerprint, state, token,"  # noqa: S608 - the test's table
                " created_at, lease_expires_at, expires_at, outcome)"
                " VALUES (%s, %s, %s, %s, 'fp', 'done', 'theirs', %s, %s, %s, 'theirs')",
                (identity.digest(), identity.namespace, identity.scope, identity.key, now, now,
                 now + RETENTION),
            )  # fmt: skip
        yield conn
    finally:
        conn.close()


@pytest.mark.parametrize("ending", ["rollback", "commit"])
def test_b7_claims_waiting_on_a_held_key_deadlock_and_still_run_once(
    open_face: OpenStore, mysql_url: str, tables: Callable[..., str], ending: str
) -> None:
    """Eight callers wait on a key another transaction inserted. If it commits, all replay its
    outcome. If it rolls back, their waiting locks become gap locks and InnoDB deadlocks them
    (counted by the server); the store runs each victim again, and the effect runs exactly
    once, its outcome replayed to the other seven."""
    table = tables()
    clock = ManualClock()
    stores = [open_face(with_options(mysql_url, table=table), clock) for _ in range(2)]
    stores[0].create_schema()  # type: ignore[attr-defined]
    for store in stores:
        store.get(ident("warm-up"))
    runs: list[int] = []
    lock = threading.Lock()

    def run() -> int:
        with lock:
            runs.append(1)
            return len(runs)

    with held_key(mysql_url, table, ident(), clock) as holder:
        before = deadlocks(mysql_url)
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(run_once, stores[i % 2], ident(), run) for i in range(8)]
            eventually(lambda: waiting_on(mysql_url, table, "INSERT INTO") == 8, "8 claims wait")
            holder.rollback() if ending == "rollback" else holder.commit()
            outcomes = [future.result(timeout=BOUND) for future in futures]
    if ending == "commit":
        assert runs == []
        assert outcomes == [b"theirs"] * 8
    else:
        assert runs == [1]
        assert outcomes == [b"run 1"] * 8
        assert deadlocks(mysql_url) > before  # the interleaving did deadlock, and was retried


def test_b14_claim_and_release_hammered_by_8_threads_never_overlap(
    open_face: OpenStore, table_url: str
) -> None:
    """Eight threads claiming and releasing one key over and over (deletes of a row other
    claims wait on) never hold it at the same time, and no error reaches a caller."""
    store = open_face(table_url)
    store.get(ident("warm-up"))
    holding, most, acquired = [0], [0], [0]
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def hammer(_: int) -> None:
        barrier.wait(timeout=BOUND)
        for _ in range(40):
            claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
            if not claim.acquired:
                continue
            with lock:
                holding[0] += 1
                most[0] = max(most[0], holding[0])
                acquired[0] += 1
            store.get(ident())  # the other threads' claims run meanwhile, and must fail
            with lock:
                holding[0] -= 1
            store.release(ident(), claim.token)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(hammer, range(8)))
    assert most[0] == 1
    assert acquired[0] > 1


def test_b20_a_lock_wait_past_lock_timeout_is_unavailable_and_changes_nothing(
    open_face: OpenStore, mysql_url: str, tables: Callable[..., str]
) -> None:
    """With `lock_timeout=1`, a claim blocked by a transaction that holds the key raises
    StoreUnavailableError (MySQL 1205) instead of waiting on; the connection is rolled back and
    reused, and once the key is free the same store claims it."""
    table = tables()
    clock = ManualClock()
    store = open_face(with_options(mysql_url, table=table, lock_timeout=1, pool_max=1), clock)
    store.get(ident("warm-up"))
    with held_key(mysql_url, table, ident(), clock) as holder:
        with pytest.raises(StoreUnavailableError) as caught:
            store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        assert isinstance(caught.value.__cause__, pymysql.err.OperationalError)
        assert caught.value.__cause__.args[0] == 1205
        holder.rollback()
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert claim.acquired
    assert [r.identity for r in store.list_records()] == [ident()]
