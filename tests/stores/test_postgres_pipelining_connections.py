"""The async PostgreSQL store's auto-pipelining on more than one connection, on real PostgreSQL:
a batch in flight on each, the next one to an idle connection or collected while all are busy,
one transaction per batch, a killed connection failing only its own batch, and row locks taken
in one order by every batch, so that two of the store's batches never deadlock each other and
a deadlock with a third transaction runs one of them again one by one.

Batches are held in flight on the server by row locks another connection holds (PostgreSQL runs
a connection's statements in order); which connection ran what is read from the batcher's
connections and from `pg_stat_activity`, never from timing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from retrysafe import Identity, StoreUnavailableError
from retrysafe.stores._postgres_pipeline import AsyncStatementPipeline
from retrysafe.stores.postgres import AsyncPostgresStore
from tests.stores.test_postgres_pipelining import (
    BOUND,
    LEASE,
    RETENTION,
    backend_pid,
    batcher,
    claim,
    ident,
    lock_record,
    run,
    table,
    until_waiting_for_lock,
    url,
    xmins,
)

pytestmark = pytest.mark.postgres

__all__ = ["table", "url"]  # the fixtures this module shares with test_postgres_pipelining

LOCK = 1_500_015  # an advisory lock key of this module's


def by_record_id(*names: str) -> list[str]:
    """`names` in the order of their records' ids: the order in which a batch locks them."""
    return sorted(names, key=lambda name: ident(name).digest())


async def open_connections(
    store: AsyncPostgresStore, count: int, postgres_url: str
) -> AsyncStatementPipeline:
    """Give the store's batcher `count` connections and open them all.

    Each statement waits for an advisory lock the helper holds, so its connection stays busy
    and the next statement goes out on the next idle one.
    """
    pipeline = batcher(store)
    pipeline.connections = count
    wait = b"SELECT pg_advisory_xact_lock_shared(%(lock)s)"
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as holder:
        await holder.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
        futures = []
        for _ in range(count):
            futures.append(pipeline._submit(wait, {"lock": LOCK}))
            await asyncio.sleep(0)  # the sender just started takes the queue
        await holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))
        async with asyncio.timeout(BOUND):
            await asyncio.gather(*futures)
    assert all(lane.link is not None for lane in pipeline._lanes)
    return pipeline


def checkpoint(store: AsyncPostgresStore, key: str, token: str) -> asyncio.Task[Any]:
    """Checkpoint `key` (a batched statement that locks its row) in a task of its own. (Not a
    renewal: the store sends those on a pooled connection of their own, never in a batch.)"""
    return asyncio.create_task(store.checkpoint(ident(key), token, "step"))


def test_the_next_batch_goes_to_an_idle_connection_or_waits_for_one(
    url: str, postgres_url: str, table: str
) -> None:
    """With two connections, a batch goes out while another is in flight, on the other
    connection; while both are in flight, the calls made meanwhile collect and go out as one
    batch when one frees. Each batch is one transaction, and no caller of a batch held on the
    server has its row before that batch commits."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        tokens = {key: (await claim(store, key)).token for key in ("gate-0", "gate-1")}
        pipeline = await open_connections(store, 2, postgres_url)
        pids = [backend_pid(store, 0), backend_pid(store, 1)]
        assert pids[0] != pids[1]
        batches, statements = pipeline.batches, pipeline.statements
        async with (
            await psycopg.AsyncConnection.connect(postgres_url) as locker,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
        ):
            await lock_record(locker, table, "gate-0")
            await lock_record(locker, table, "gate-1")
            first = [checkpoint(store, "gate-0", tokens["gate-0"])]
            first += [asyncio.create_task(claim(store, f"one-{index}")) for index in range(3)]
            await until_waiting_for_lock(admin, pids[0])
            second = [checkpoint(store, "gate-1", tokens["gate-1"])]
            second += [asyncio.create_task(claim(store, f"two-{index}")) for index in range(3)]
            await until_waiting_for_lock(admin, pids[1])
            third = [asyncio.create_task(claim(store, f"three-{index}")) for index in range(4)]
            for _ in range(5):  # both connections are busy: nothing more goes out
                await asyncio.sleep(0)
            assert (pipeline.batches - batches, pipeline.statements - statements) == (2, 8)
            assert not any(task.done() for task in (*first, *second, *third))
            await locker.rollback()
            async with asyncio.timeout(BOUND):
                results = await asyncio.gather(*first[1:], *second[1:], *third)
                await asyncio.gather(first[0], second[0])
        assert (pipeline.batches - batches, pipeline.statements - statements) == (3, 12)
        assert all(c.acquired for c in results)
        for prefix, count in (("one", 3), ("two", 3), ("three", 4)):
            keys = [f"{prefix}-{index}" for index in range(count)]
            assert len(set(await xmins(postgres_url, table, keys))) == 1, prefix
        everything = [f"{prefix}-0" for prefix in ("one", "two", "three")]
        assert len(set(await xmins(postgres_url, table, everything))) == 3
        await store.aclose()

    run(main)


def test_a_connection_killed_mid_batch_fails_only_its_own_batch(
    url: str, postgres_url: str, table: str
) -> None:
    """Two batches in flight on two connections; the backend of one is killed: its callers
    each get StoreUnavailableError and nothing of it commits, the other batch's callers get
    their rows, and the next batch on the killed one's place opens a new connection."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        tokens = {key: (await claim(store, key)).token for key in ("gate-0", "gate-1")}
        await open_connections(store, 2, postgres_url)
        pids = [backend_pid(store, 0), backend_pid(store, 1)]
        async with (
            await psycopg.AsyncConnection.connect(postgres_url) as locker,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
        ):
            await lock_record(locker, table, "gate-0")
            await lock_record(locker, table, "gate-1")
            doomed = [checkpoint(store, "gate-0", tokens["gate-0"])]
            doomed += [asyncio.create_task(claim(store, f"doomed-{index}")) for index in range(3)]
            await until_waiting_for_lock(admin, pids[0])
            kept = [checkpoint(store, "gate-1", tokens["gate-1"])]
            kept += [asyncio.create_task(claim(store, f"kept-{index}")) for index in range(3)]
            await until_waiting_for_lock(admin, pids[1])
            await admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            async with asyncio.timeout(BOUND):
                failed = await asyncio.gather(*doomed, return_exceptions=True)
            assert not any(task.done() for task in kept)  # the other batch is still in flight
            await locker.rollback()
            async with asyncio.timeout(BOUND):
                survived = await asyncio.gather(*kept)
        assert all(isinstance(result, StoreUnavailableError) for result in failed)
        assert len({id(result) for result in failed}) == 4  # each caller its own error
        assert all(c.acquired for c in survived[1:])
        assert backend_pid(store, 1) == pids[1]
        again = await asyncio.gather(*(claim(store, f"doomed-{index}") for index in range(3)))
        assert all(c.acquired for c in again)  # the killed batch committed nothing
        assert pids[0] not in {backend_pid(store, 0), backend_pid(store, 1)}
        await store.aclose()

    run(main)


def test_two_batches_in_flight_lock_shared_records_in_one_order(
    url: str, postgres_url: str, table: str
) -> None:
    """Two batches in flight on the store's two connections touch the same records, arriving
    in opposite orders (checkpoints in one, completions in the other): each is sent in the order
    of the records' ids, so the second waits for the first's commit instead of deadlocking."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        low, gate, high = by_record_id("r-x", "r-y", "r-z")
        tokens = {key: (await claim(store, key)).token for key in (low, gate, high)}
        pipeline = await open_connections(store, 2, postgres_url)
        pids = [backend_pid(store, 0), backend_pid(store, 1)]
        async with (
            await psycopg.AsyncConnection.connect(postgres_url) as locker,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
        ):
            await lock_record(locker, table, gate)
            # The first batch locks `low`, then waits at the gate, before `high`.
            first = [checkpoint(store, key, tokens[key]) for key in (low, gate, high)]
            await until_waiting_for_lock(admin, pids[0])
            # Sent as they arrive, the second would lock `high`, then wait for `low`.
            second = [
                asyncio.create_task(store.complete(ident(key), tokens[key], b"ok", retention=60))
                for key in (high, low)
            ]
            await until_waiting_for_lock(admin, pids[1])  # for `low`: the same record
            await locker.rollback()
            async with asyncio.timeout(BOUND):
                checkpointed = await asyncio.gather(*first)
                completed = await asyncio.gather(*second)
        assert [record.identity for record in checkpointed] == [ident(k) for k in (low, gate, high)]
        assert [record.outcome for record in completed] == [b"ok", b"ok"]
        assert pipeline.reruns == 0
        await store.aclose()

    run(main)


def test_a_deadlock_through_a_third_transaction_runs_one_batch_again_one_by_one(
    url: str, postgres_url: str, table: str
) -> None:
    """The store's two batches in flight and a third transaction wait for each other in a
    cycle: PostgreSQL aborts one of the store's batches, whose statements then run again one by
    one; every caller gets its own record."""

    async def main() -> None:
        # A superuser may lower deadlock_timeout for a session: the store's connections check
        # for a deadlock after 50 ms, the third transaction never within the test.
        store = AsyncPostgresStore.from_url(f"{url}&options=-c%20deadlock_timeout%3D50ms")
        a, b, c, d = by_record_id("d-1", "d-2", "d-3", "d-4")
        tokens = {key: (await claim(store, key)).token for key in (a, b, c, d)}
        pipeline = await open_connections(store, 2, postgres_url)
        pids = [backend_pid(store, 0), backend_pid(store, 1)]
        async with (
            await psycopg.AsyncConnection.connect(postgres_url) as third,
            await psycopg.AsyncConnection.connect(postgres_url) as gatekeeper,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
        ):
            await third.execute("SET deadlock_timeout = '60s'")
            await lock_record(third, table, d)
            await lock_record(gatekeeper, table, b)
            one = [checkpoint(store, key, tokens[key]) for key in (c, d)]  # holds c, waits for d
            await until_waiting_for_lock(admin, pids[0])
            two = [checkpoint(store, key, tokens[key]) for key in (a, b, c)]  # holds a, waits at b
            await until_waiting_for_lock(admin, pids[1])
            taking = asyncio.create_task(lock_record(third, table, a))  # waits for two
            await until_waiting_for_lock(admin, third.info.backend_pid)
            await gatekeeper.rollback()  # two now waits for c: two -> one -> third -> two
            async with asyncio.timeout(BOUND):
                await taking  # the aborted batch let go of what it held
            await third.rollback()
            async with asyncio.timeout(BOUND):
                results = await asyncio.gather(*one, *two)
        assert [record.identity for record in results] == [ident(key) for key in (c, d, a, b, c)]
        assert pipeline.reruns == 1
        await store.aclose()

    run(main)


def test_sixteen_tasks_on_four_connections(url: str) -> None:
    """Sixteen tasks claiming, completing and replaying 25 keys each on four connections all
    get their own results."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        batcher(store).connections = 4

        async def worker(number: int) -> None:
            for index in range(25):
                key = Identity("pg-pipe", "tenant", f"w{number}-{index}")
                first = await store.claim(key, "fp", lease=LEASE, retention=RETENTION)
                assert first.acquired
                outcome = f"{number}-{index}".encode()
                await store.complete(key, first.token, outcome, retention=RETENTION)
                replay = await store.claim(key, "fp", lease=LEASE, retention=RETENTION)
                assert not replay.acquired
                assert replay.record.outcome == outcome

        async with asyncio.timeout(BOUND * 3):
            await asyncio.gather(*(worker(number) for number in range(16)))
        await store.aclose()

    run(main)


def test_the_number_of_connections_is_at_least_one(url: str) -> None:
    """A batcher refuses fewer than one connection, and one can be given more while idle."""
    pipeline = batcher(AsyncPostgresStore.from_url(url))
    with pytest.raises(ValueError, match="at least one"):
        pipeline.connections = 0
    pipeline.connections = 4
    assert pipeline.connections == 4
