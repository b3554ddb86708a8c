"""The async PostgreSQL store's auto-pipelining: batches, one commit per batch, a failing
statement, a connection killed mid-batch, cancelled callers and the switch that turns it off,
on real PostgreSQL.

Batches are proven by the batcher's counters and by the transaction ids (`xmin`) of the rows
they wrote, never by timing. A batch is held in flight on the server by a completion that
waits for a row lock another connection holds: PostgreSQL runs a connection's statements in
order, so the statements behind it wait too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from retrysafe import Claim, Identity, StoreError, StoreUnavailableError
from retrysafe.stores._postgres_pipeline import AsyncStatementPipeline
from retrysafe.stores.postgres import AsyncPostgresStore, PostgresStore
from tests.conftest import unique_name

pytestmark = pytest.mark.postgres

LEASE = 30.0
RETENTION = 3600.0
BOUND = 10.0  # seconds: the longest any wait of these tests may take


def ident(key: str) -> Identity:
    """An identity in this module's namespace."""
    return Identity("pg-pipe", "tenant", key)


@pytest.fixture
def table(postgres_url: str) -> Iterator[str]:
    """A fresh table name, dropped after the test."""
    name = unique_name()
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def url(postgres_url: str, table: str) -> str:
    """The store URL for this test's table."""
    return f"{postgres_url}?table={table}"


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async test body on a fresh event loop."""
    asyncio.run(main())


def batcher(store: AsyncPostgresStore) -> AsyncStatementPipeline:
    """The store's batcher (the async store's default statement runner)."""
    runner = store._runner
    assert isinstance(runner, AsyncStatementPipeline)
    return runner


def claim(store: AsyncPostgresStore, key: str) -> Coroutine[Any, Any, Claim]:
    """Claim `key` with the test's lease and retention."""
    return store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)


async def xmins(postgres_url: str, table: str, keys: list[str]) -> list[int]:
    """The transaction ids that last wrote the records of `keys`, in order."""
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        query = sql.SQL("SELECT xmin::text::bigint FROM {} WHERE id = %s")
        found = []
        for key in keys:
            cursor = await conn.execute(query.format(sql.Identifier(table)), (ident(key).digest(),))
            row = await cursor.fetchone()
            assert row is not None, key
            found.append(int(row[0]))
        return found


async def until_waiting_for_lock(conn: psycopg.AsyncConnection[Any], pid: int) -> None:
    """Return once backend `pid` waits for a lock (a batch held in flight), within BOUND."""
    async with asyncio.timeout(BOUND):
        while True:
            cursor = await conn.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            )
            row = await cursor.fetchone()
            if row is not None and row[0] == "Lock":
                return
            await asyncio.sleep(0.01)


async def lock_record(conn: psycopg.AsyncConnection[Any], table: str, key: str) -> None:
    """Lock the record of `key` in `conn`'s open transaction."""
    query = sql.SQL("SELECT 1 FROM {} WHERE id = %s FOR UPDATE").format(sql.Identifier(table))
    await conn.execute(query, (ident(key).digest(),))


def backend_pid(store: AsyncPostgresStore, lane: int = 0) -> int:
    """The process id of the server backend of the batcher's connection number `lane`."""
    link = batcher(store)._lanes[lane].link
    assert link is not None
    return link.pgconn.backend_pid


def test_concurrent_calls_in_one_turn_share_one_batch_and_keep_their_results(url: str) -> None:
    """Fifty claims and a read issued in one loop turn go out as one batch; each caller gets its
    own row (the first claim of each key acquires it, the second sees the holder)."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        pipeline = batcher(store)
        await claim(store, "warm-up")  # the table exists, the connection is open
        batches, statements = pipeline.batches, pipeline.statements
        keys = [f"k{index % 25}" for index in range(50)]
        claims, read = await asyncio.gather(
            asyncio.gather(*(claim(store, key) for key in keys)), store.get(ident("warm-up"))
        )
        assert (pipeline.batches - batches, pipeline.statements - statements) == (1, 51)
        first, second = claims[:25], claims[25:]
        assert all(c.acquired for c in first)
        assert not any(c.acquired for c in second)
        for index, (won, lost) in enumerate(zip(first, second, strict=True)):
            assert won.record.identity == lost.record.identity == ident(f"k{index}")
            assert lost.record.token == won.token
        assert len({c.token for c in first}) == 25
        assert read is not None
        assert read.identity == ident("warm-up")
        await store.aclose()

    run(main)


def test_a_batch_commits_once(url: str, postgres_url: str, table: str) -> None:
    """The claims of one batch are written by one transaction (one WAL flush), and nobody
    learns of a claim before that commit."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        pipeline = batcher(store)
        await claim(store, "warm-up")
        batches = pipeline.batches
        keys = [f"k{index}" for index in range(10)]
        claims = await asyncio.gather(*(claim(store, key) for key in keys))
        assert pipeline.batches - batches == 1
        assert all(c.acquired for c in claims)
        assert len(set(await xmins(postgres_url, table, keys))) == 1
        await store.aclose()

    run(main)


def test_b17_a_failing_statement_fails_its_caller_and_the_batch_runs_again_one_by_one(
    url: str, postgres_url: str, table: str
) -> None:
    """A claim that PostgreSQL refuses aborts its batch's transaction: its caller gets
    StoreError, and every other statement runs again on its own, applied once (a completion
    applied twice would be fenced, B17)."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        pipeline = batcher(store)
        held = await asyncio.gather(*(claim(store, f"held-{index}") for index in range(3)))
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("ALTER TABLE {} ADD CHECK (key <> 'refused'::bytea)").format(
                    sql.Identifier(table)
                )
            )
        batches, reruns = pipeline.batches, pipeline.reruns
        done, fresh, refused = await asyncio.gather(
            asyncio.gather(
                *(
                    store.complete(ident(f"held-{index}"), c.token, b"ok", retention=RETENTION)
                    for index, c in enumerate(held)
                )
            ),
            asyncio.gather(*(claim(store, f"fresh-{index}") for index in range(3))),
            asyncio.gather(claim(store, "refused"), return_exceptions=True),
        )
        assert (pipeline.batches - batches, pipeline.reruns - reruns) == (1, 1)
        assert [record.outcome for record in done] == [b"ok"] * 3
        assert all(c.acquired for c in fresh)
        for c in fresh:
            stored = await store.get(c.record.identity)
            assert stored is not None
            assert stored.token == c.token
        assert isinstance(refused[0], StoreError)
        assert not isinstance(refused[0], StoreUnavailableError)
        assert await store.get(ident("refused")) is None
        keys = [f"held-{index}" for index in range(3)] + [f"fresh-{index}" for index in range(3)]
        assert len(set(await xmins(postgres_url, table, keys))) == 6  # each its own commit
        await store.aclose()

    run(main)


def test_a_connection_killed_mid_batch_fails_every_caller_then_recovers(
    url: str, postgres_url: str, table: str
) -> None:
    """Kill the batcher's backend while its batch waits on a row lock: every caller of the
    batch gets StoreUnavailableError (its own), nothing of the batch is committed, and the next
    calls run on a new connection."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        held = await claim(store, "locked")
        pid = backend_pid(store)
        async with (
            await psycopg.AsyncConnection.connect(postgres_url) as locker,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
        ):
            await lock_record(locker, table, "locked")
            blocked = asyncio.create_task(
                store.complete(ident("locked"), held.token, b"ok", retention=RETENTION)
            )
            behind = [asyncio.create_task(claim(store, f"behind-{index}")) for index in range(5)]
            await until_waiting_for_lock(admin, pid)
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            results = await asyncio.gather(blocked, *behind, return_exceptions=True)
            await locker.rollback()
        assert all(isinstance(result, StoreUnavailableError) for result in results)
        assert len({id(result) for result in results}) == 6  # each caller its own error
        after = await asyncio.gather(*(claim(store, f"behind-{index}") for index in range(5)))
        assert all(c.acquired for c in after)  # the killed batch committed nothing
        record = await store.complete(ident("locked"), held.token, b"ok", retention=RETENTION)
        assert record.outcome == b"ok"
        assert backend_pid(store) != pid
        await store.aclose()

    run(main)


def test_a_connection_killed_while_idle_is_replaced_before_the_next_batch(
    url: str, postgres_url: str
) -> None:
    """A batcher connection the server closed while idle is noticed before the next batch is
    written: that batch runs on a new connection, and no caller sees an error."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        await claim(store, "warm-up")
        pid = backend_pid(store)
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s, %s)", (pid, 5000))
        claims = await asyncio.gather(*(claim(store, f"k{index}") for index in range(5)))
        assert all(c.acquired for c in claims)
        assert backend_pid(store) != pid
        await store.aclose()

    run(main)


def test_cancelled_callers_lose_nothing_and_get_nothing_of_anyone_else(
    url: str, postgres_url: str, table: str
) -> None:
    """A caller cancelled while its statement is in flight has it run, and the others of its
    batch get their own rows; one cancelled while queued behind that batch is left out of the
    next, whose callers get their own rows."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        pipeline = batcher(store)
        held = await claim(store, "locked")
        pid = backend_pid(store)
        async with (
            await psycopg.AsyncConnection.connect(postgres_url) as locker,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
        ):
            await lock_record(locker, table, "locked")
            blocked = asyncio.create_task(
                store.complete(ident("locked"), held.token, b"ok", retention=RETENTION)
            )
            sent = {key: asyncio.create_task(claim(store, key)) for key in ("s0", "s1", "s2")}
            await until_waiting_for_lock(admin, pid)
            statements = pipeline.statements
            queued = {key: asyncio.create_task(claim(store, key)) for key in ("q0", "q1", "q2")}
            await asyncio.sleep(0)  # the queued callers submit their statements
            sent["s1"].cancel()
            queued["q1"].cancel()
            await locker.rollback()
            assert (await blocked).outcome == b"ok"
            results = {key: await task for key, task in {**sent, **queued}.items() if key[1] != "1"}
        assert pipeline.statements - statements == 2  # q0 and q2: q1 was left out
        for key, result in results.items():
            assert result.acquired
            assert result.record.identity == ident(key)
            stored = await store.get(ident(key))
            assert stored is not None
            assert stored.token == result.token
        assert sent["s1"].cancelled()
        assert queued["q1"].cancelled()
        assert await store.get(ident("s1")) is not None  # sent: it ran
        assert await store.get(ident("q1")) is None  # never sent
        await store.aclose()

    run(main)


def test_many_concurrent_tasks_first_time_and_replays(url: str) -> None:
    """Sixteen tasks claiming, completing and replaying 40 keys each all get their own
    results, in batches of more than one statement."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(url)
        pipeline = batcher(store)

        async def worker(number: int) -> None:
            for index in range(40):
                key = f"w{number}-{index}"
                first = await claim(store, key)
                assert first.acquired
                outcome = key.encode()
                await store.complete(ident(key), first.token, outcome, retention=RETENTION)
                replay = await claim(store, key)
                assert not replay.acquired
                assert replay.record.outcome == outcome

        await asyncio.gather(*(worker(number) for number in range(16)))
        assert pipeline.statements > pipeline.batches
        await store.aclose()

    run(main)


def test_autopipeline_false_runs_each_statement_on_a_pooled_connection(url: str) -> None:
    """`?autopipeline=false` turns batching off; the sync store accepts it and never batches."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(f"{url}&autopipeline=false")
        assert store._runner is None
        claims = await asyncio.gather(*(claim(store, f"k{index}") for index in range(5)))
        assert all(c.acquired for c in claims)
        await store.aclose()

    run(main)
    for options in ("", "&autopipeline=false", "&autopipeline=true"):
        sync = PostgresStore.from_url(f"{url}{options}")
        assert sync._runner is None
        assert sync.claim(ident(f"sync{options}"), "fp", lease=LEASE, retention=RETENTION).acquired
        sync.close()


def test_two_stores_batches_lock_shared_records_in_one_order(
    url: str, postgres_url: str, table: str
) -> None:
    """Two stores' batches (two processes') that touch the same records, arriving in opposite
    orders, are each sent in the order of the records' ids: the second waits for the first's
    commit instead of deadlocking with it, and no batch runs again."""

    async def main() -> None:
        # deadlock_timeout at 50 ms: a deadlock, were there one, would show within the test.
        fast = f"{url}&options=-c%20deadlock_timeout%3D50ms"
        first, second = AsyncPostgresStore.from_url(fast), AsyncPostgresStore.from_url(fast)
        low, gate, high = sorted(("a", "b", "gate"), key=lambda key: ident(key).digest())
        tokens = {key: (await claim(first, key)).token for key in (low, gate, high)}
        await second.get(ident(low))  # the second store's batcher connection is open

        def checkpoint(store: AsyncPostgresStore, key: str) -> asyncio.Task[Any]:
            return asyncio.create_task(store.checkpoint(ident(key), tokens[key], "step"))

        async with (
            await psycopg.AsyncConnection.connect(postgres_url) as locker,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
        ):
            await lock_record(locker, table, gate)
            # The first batch locks `low`, then waits at the gate. Sent as they arrive, the
            # second would lock `high` and wait for `low`, which the first holds, while the
            # first, past the gate, would wait for `high`.
            ones = [checkpoint(first, low), checkpoint(first, gate), checkpoint(first, high)]
            await until_waiting_for_lock(admin, backend_pid(first))
            twos = [checkpoint(second, high), checkpoint(second, low)]
            await until_waiting_for_lock(admin, backend_pid(second))
            await locker.rollback()
            async with asyncio.timeout(BOUND):
                results = await asyncio.gather(*ones, *twos)
        assert [record.identity for record in results] == [
            ident(key) for key in (low, gate, high, high, low)
        ]
        assert batcher(first).reruns + batcher(second).reruns == 0
        await first.aclose()
        await second.aclose()

    run(main)
