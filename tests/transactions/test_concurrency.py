"""Concurrent duplicates in transactional mode: one effect, every other caller replays it."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from retrysafe import Identity, InFlightError, ManualClock, State, transactions
from tests.transactions.conftest import Database, Face, Paid

DUPLICATES = 50


def test_b14_fifty_concurrent_duplicates_make_one_effect(face: Face) -> None:
    """50 threads with one key: one runs and commits, the 49 others wait on the key and
    replay its outcome."""
    barrier = threading.Barrier(DUPLICATES)

    def attempt() -> Paid:
        barrier.wait(timeout=30)
        return face.pay("k1", hold=0.2)

    with ThreadPoolExecutor(DUPLICATES) as pool:
        results = list(pool.map(lambda _: attempt(), range(DUPLICATES)))
    runs = [paid for paid in results if not paid.replay]
    assert len(runs) == 1
    assert {paid.outcome for paid in results} == {runs[0].outcome}
    assert [row[0] for row in face.database.payment_rows()] == [runs[0].payment_id]


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_b14_fifty_duplicate_tasks_on_one_event_loop(
    database: Database, clock: ManualClock
) -> None:
    """50 asyncio tasks, each on its own AsyncConnection: one effect, 49 replays."""
    import psycopg

    identity = Identity("payments", "tenant-a", "k1")
    insert = f"INSERT INTO {database.payments} VALUES (%s, 'k1', 1)"  # noqa: S608 - a unique_name() table

    async def attempt(start: asyncio.Event) -> tuple[bool, bytes | None]:
        async with await psycopg.AsyncConnection.connect(database.dsn) as conn:
            await start.wait()
            async with transactions.psycopg(
                conn, identity=identity, fingerprint="fp", table=database.table, clock=clock
            ) as tx:
                if tx.replay:
                    return True, tx.outcome
                payment_id = secrets.token_hex(6)
                await conn.execute(insert, (payment_id,))
                await asyncio.sleep(0.2)
                tx.complete(json.dumps({"id": payment_id}).encode())
            return False, tx.outcome

    async def main() -> list[tuple[bool, bytes | None]]:
        start = asyncio.Event()
        tasks = [asyncio.create_task(attempt(start)) for _ in range(DUPLICATES)]
        await asyncio.sleep(0)
        start.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert sum(1 for replay, _ in results if not replay) == 1
    outcomes = {outcome for _, outcome in results}
    assert len(outcomes) == 1
    (outcome,) = outcomes
    assert outcome is not None
    assert [row[0] for row in database.payment_rows()] == [json.loads(outcome)["id"]]


def test_b29_a_store_claim_waits_for_the_open_transaction(
    database: Database, clock: ManualClock
) -> None:
    """A claim through the store (the middleware's path) made while the transaction is open
    waits for its commit and finds the finished record, never a second execution."""
    identity = Identity("payments", "tenant-a", "k1")
    inside = threading.Event()
    store = database.store(clock)
    try:
        store.get(identity)  # create the store's table and pool before the race
        opener = transactions.sqlite if database.kind == "sqlite" else transactions.psycopg

        def transaction() -> None:
            conn = database.connect()
            try:
                with opener(
                    conn, identity=identity, fingerprint="fp", table=database.table, clock=clock
                ) as tx:
                    inside.set()
                    threading.Event().wait(0.3)  # keep it open while the claim waits
                    tx.complete(b"the outcome")
            finally:
                conn.close()

        worker = threading.Thread(target=transaction)
        worker.start()
        assert inside.wait(10)
        claim = store.claim(identity, "fp", lease=30, retention=3600)
        worker.join(10)
        assert not claim.acquired
        assert claim.record.state is State.DONE
        assert claim.record.outcome == b"the outcome"
    finally:
        store.close()


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_b14_lock_timeout_bounds_the_wait_with_in_flight(
    database: Database, clock: ManualClock
) -> None:
    """On PostgreSQL a duplicate waits while the first transaction holds the key; with a
    lock_timeout on its connection it stops waiting and gets InFlightError."""
    import psycopg

    identity = Identity("payments", "tenant-a", "k1")
    options: dict[str, Any] = {
        "identity": identity,
        "fingerprint": "fp",
        "table": database.table,
        "clock": clock,
    }
    store = database.store(clock)
    store.get(identity)  # the table exists before either transaction
    store.close()
    with psycopg.connect(database.dsn) as first, psycopg.connect(database.dsn) as second:
        second.execute("SET lock_timeout = '100ms'")
        second.commit()
        with transactions.psycopg(first, **options) as tx:
            with pytest.raises(InFlightError), transactions.psycopg(second, **options):
                pass  # pragma: no cover - the claim never returns
            tx.complete(b"done")
        with transactions.psycopg(second, **options) as again:
            assert again.replay
            assert again.outcome == b"done"
