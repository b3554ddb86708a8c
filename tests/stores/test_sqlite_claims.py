"""How the SQLite store claims: what is answered from a plain read, what takes the write lock.

On the sync face, a claim that finds a record it may not take (done, a mismatch, or in flight
with a live lease) is answered from a read without the write lock; a claim that may take the key
(no record, past retention, a lapsed lease) takes the lock, so a takeover stays atomic. On the
async face every claim goes through the writer thread (nothing reads in the event loop), and
reads run in worker threads, so they are answered while the writer is busy. Under the lock, a
key with no row is claimed in one statement.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from retrysafe import Claim, ManualClock, State
from retrysafe.stores._sql.sqlite import RecordTable
from retrysafe.stores._sql.sqlite_connection import connect, write_transaction
from retrysafe.stores.sqlite import AsyncSQLiteStore, SQLiteStore
from tests.stores.test_sqlite_writer import LEASE, RETENTION, ident, queued, wait_until


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a database file that does not exist yet."""
    return tmp_path / "store.db"


def test_b14_b13_duplicates_of_a_live_in_flight_record_are_refused_through_the_writer(
    db_path: Path,
) -> None:
    """On the async face, duplicates of a live in-flight request (same fingerprint or not)
    queue behind a held write like every claim, then are refused with the one record; a read
    is answered meanwhile, in a worker thread."""
    go = threading.Event()

    async def scenario() -> tuple[Claim, dict[str, Claim], object]:
        store = AsyncSQLiteStore(db_path, clock=ManualClock())
        first = await store.claim(ident("busy"), "fp", lease=LEASE, retention=RETENTION)
        claims: dict[str, Claim] = {}

        async def claim(name: str, key: str, fingerprint: str) -> None:
            claims[name] = await store.claim(
                ident(key), fingerprint, lease=LEASE, retention=RETENTION
            )

        async with anyio.create_task_group() as group:
            group.start_soon(store._runner.write, lambda connection, now: go.wait(10))
            await anyio.wait_all_tasks_blocked()
            await anyio.to_thread.run_sync(wait_until, lambda: queued(store) == 0)
            group.start_soon(claim, "same", "busy", "fp")
            group.start_soon(claim, "other", "busy", "fp-2")
            group.start_soon(claim, "new", "new", "fp")
            await anyio.wait_all_tasks_blocked()
            assert claims == {}  # behind the held write
            assert queued(store) == 3
            read = await store.get(ident("busy"))  # not behind it
            go.set()
        await store.aclose()
        return first, claims, read

    first, claims, read = anyio.run(scenario)
    assert read == first.record
    assert not claims["same"].acquired
    assert not claims["other"].acquired
    assert claims["same"].record == first.record == claims["other"].record
    assert claims["new"].acquired


def test_b16_b7_a_lapsed_lease_is_taken_over_through_the_writer_by_one_claim(
    db_path: Path,
) -> None:
    """Of 20 claims on a lapsed lease, all wait for the writer and exactly one takes it over."""
    clock = ManualClock()
    go = threading.Event()

    async def scenario() -> list[Claim]:
        store = AsyncSQLiteStore(db_path, clock=clock)
        held = await store.claim(ident("k"), "fp", lease=LEASE, retention=RETENTION)
        await store.checkpoint(ident("k"), held.token, "phase-1")
        clock.advance(LEASE + 1)
        claims: list[Claim] = []

        async def claim() -> None:
            claims.append(await store.claim(ident("k"), "fp", lease=LEASE, retention=RETENTION))

        async with anyio.create_task_group() as group:
            group.start_soon(store._runner.write, lambda connection, now: go.wait(10))
            await anyio.wait_all_tasks_blocked()
            await anyio.to_thread.run_sync(wait_until, lambda: queued(store) == 0)
            for _ in range(20):
                group.start_soon(claim)
            await anyio.wait_all_tasks_blocked()
            assert not claims  # every one waits for the writer
            assert queued(store) == 20
            go.set()
        await store.aclose()
        return claims

    claims = anyio.run(scenario)
    winners = [claim for claim in claims if claim.acquired]
    assert len(winners) == 1
    assert winners[0].taken_over
    assert winners[0].record.recovery_point == "phase-1"
    assert all(claim.record == winners[0].record for claim in claims if not claim.acquired)


def test_b14_sync_face_answers_a_live_in_flight_record_without_the_write_lock(
    db_path: Path,
) -> None:
    """The sync store answers an in-flight duplicate while its write lock is held elsewhere."""
    clock = ManualClock()
    store = SQLiteStore(db_path, clock=clock)
    store.claim(ident("busy"), "fp", lease=LEASE, retention=RETENTION)
    store.claim(ident("lapsed"), "fp", lease=1, retention=RETENTION)
    clock.advance(2)
    results: dict[str, Claim] = {}

    def claim(key: str) -> None:
        results[key] = store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)

    store._write_lock.acquire()
    try:
        duplicate = threading.Thread(target=claim, args=("busy",))
        duplicate.start()
        duplicate.join(10)
        assert not duplicate.is_alive()
        takeover = threading.Thread(target=claim, args=("lapsed",))
        takeover.start()
        wait_until(lambda: len(store._queue) == 1)
        assert "lapsed" not in results
    finally:
        store._write_lock.release()
    takeover.join(10)
    assert not takeover.is_alive()
    assert not results["busy"].acquired
    assert results["lapsed"].acquired
    assert results["lapsed"].taken_over
    store.close()


def test_b7_a_key_with_no_row_is_claimed_in_one_statement(db_path: Path) -> None:
    """A new key is claimed in one INSERT, and rows that hold the key are decided as before."""
    table = RecordTable()
    connection = connect(str(db_path), timeout=5, synchronous="normal")
    statements: list[str] = []
    with write_transaction(connection):
        table.create_schema(connection)
    now = 1_000.0

    def claim(key: str, at: float) -> Claim:
        with write_transaction(connection):
            return table.claim(connection, ident(key), "fp", now=at, lease=10, retention=100)

    connection.set_trace_callback(statements.append)
    fresh = claim("new", now)
    connection.set_trace_callback(None)
    assert fresh.acquired
    assert not fresh.taken_over
    assert [sql.split(" (")[0] for sql in statements[1:-1]] == [
        'INSERT OR IGNORE INTO "retrysafe_records"'
    ]

    live = claim("new", now + 5)
    assert not live.acquired
    assert live.record == fresh.record

    with write_transaction(connection):
        table.checkpoint(connection, ident("new"), fresh.token, "phase-1", now=now + 1)
    lapsed = claim("new", now + 11)
    assert lapsed.acquired
    assert lapsed.taken_over
    assert lapsed.record.created_at == now
    assert lapsed.record.recovery_point == "phase-1"

    expired = claim("new", now + 500)  # past retention, still in the table
    assert expired.acquired
    assert not expired.taken_over
    assert expired.record.created_at == now + 500
    assert expired.record.recovery_point is None
    with write_transaction(connection):
        stored = table.get(connection, ident("new"), now=now + 500)
    assert stored == expired.record
    assert stored is not None
    assert stored.state is State.IN_FLIGHT
    connection.close()


def test_b17_a_claim_that_fails_changes_nothing(db_path: Path) -> None:
    """A claim whose insert fails (the table made to refuse it) raises and leaves no row."""
    table = RecordTable()
    connection = connect(str(db_path), timeout=5, synchronous="normal")
    with write_transaction(connection):
        table.create_schema(connection)
        connection.execute(
            'CREATE TRIGGER refuse BEFORE INSERT ON "retrysafe_records"'
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="refused"), write_transaction(connection):
        table.claim(connection, ident("k"), "fp", now=1.0, lease=10, retention=100)
    assert connection.execute('SELECT COUNT(*) FROM "retrysafe_records"').fetchone() == (0,)
    connection.close()


def test_b10_b30_the_completion_returns_the_stored_record_without_reading_the_outcome_back(
    db_path: Path,
) -> None:
    """The completion's read asks only for what the caller did not write (the fingerprint,
    the creation time, the recovery point), and the record it returns is the stored one."""
    table = RecordTable()
    connection = connect(str(db_path), timeout=5, synchronous="normal")
    outcome = bytes(range(256)) * 4096  # 1 MiB, which the completion wrote and keeps
    with write_transaction(connection):
        table.create_schema(connection)
        claim = table.claim(connection, ident("k"), "fp", now=1.0, lease=10, retention=100)
        table.checkpoint(connection, ident("k"), claim.token, "phase-1", now=2.0)
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    with write_transaction(connection):
        done = table.complete(connection, ident("k"), claim.token, outcome, now=3.0, retention=50)
    connection.set_trace_callback(None)
    reads = [statement.split(" WHERE ")[0] for statement in statements if "SELECT" in statement]
    assert reads == ['SELECT fingerprint, created_at, recovery_point FROM "retrysafe_records"']
    assert (done.state, done.outcome, done.recovery_point) == (State.DONE, outcome, "phase-1")
    assert (done.created_at, done.lease_expires_at, done.expires_at) == (1.0, 3.0, 53.0)
    with write_transaction(connection):
        assert table.get(connection, ident("k"), now=3.0) == done
    connection.close()
