"""Transactional mode on MySQL and MariaDB (B29, B14): the key commits with the writes, or neither.

The tests of test_transaction.py and test_concurrency.py that fit every database run here on
each MySQL face (PyMySQL, aiomysql, SQLAlchemy sessions on both): this module's `face` is
`mysql_face`. The tests below are MySQL's own: savepoints in the caller's transaction, both
isolation levels, duplicates that wait on the key's row lock (seen waiting in InnoDB's own
transaction list, not guessed with sleeps), the lock wait timeout, deadlocks, and the records
table that MySQL's DDL would commit a transaction to create.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from retrysafe import (
    ConfigurationError,
    Identity,
    InFlightError,
    ManualClock,
    State,
    StoreUnavailableError,
    transactions,
)
from retrysafe.transactions._state import DeadlockRollbackError
from tests.transactions.conftest import BoomError, Database, Face
from tests.transactions.test_concurrency import (
    test_b14_fifty_concurrent_duplicates_make_one_effect,
)
from tests.transactions.test_transaction import (
    test_b10_duplicate_replays_the_outcome_without_writing,
    test_b10_writes_made_during_a_replay_are_rolled_back,
    test_b13_same_key_with_another_request_is_a_mismatch,
    test_b16_a_store_claim_in_flight_refuses_then_is_taken_over,
    test_b21_after_retention_the_key_runs_again,
    test_b29_a_block_without_complete_rolls_back_and_says_so,
    test_b29_exception_rolls_back_the_claim_with_the_writes,
    test_b29_first_run_commits_effect_and_outcome_in_the_store_table,
    test_b34_hostile_keys_are_stored_as_given,
)

pytestmark = pytest.mark.mysql

__all__ = [
    "test_b10_duplicate_replays_the_outcome_without_writing",
    "test_b10_writes_made_during_a_replay_are_rolled_back",
    "test_b13_same_key_with_another_request_is_a_mismatch",
    "test_b14_fifty_concurrent_duplicates_make_one_effect",
    "test_b16_a_store_claim_in_flight_refuses_then_is_taken_over",
    "test_b21_after_retention_the_key_runs_again",
    "test_b29_a_block_without_complete_rolls_back_and_says_so",
    "test_b29_exception_rolls_back_the_claim_with_the_writes",
    "test_b29_first_run_commits_effect_and_outcome_in_the_store_table",
    "test_b34_hostile_keys_are_stored_as_given",
]

ISOLATION_LEVELS = ["REPEATABLE READ", "READ COMMITTED", "SERIALIZABLE"]
WAIT = 30.0  # seconds any one wait of these tests may take before it fails


@pytest.fixture
def face(mysql_face: Face) -> Face:
    """The shared tests' driver face: here, each MySQL one."""
    return mysql_face


@pytest.fixture
def database(mysql_database: Database) -> Database:
    """The shared tests' database: here, the MySQL server."""
    return mysql_database


def _options(database: Database, clock: ManualClock, key: str = "k1") -> dict[str, Any]:
    return {
        "identity": Identity("payments", "tenant-a", key),
        "fingerprint": "fp",
        "table": database.table,
        "clock": clock,
    }


def _insert(conn: Any, database: Database, payment_id: str, key: str = "k1") -> None:
    with conn.cursor() as cursor:
        cursor.execute(f"INSERT INTO {database.payments} VALUES (%s, %s, 1)", (payment_id, key))  # noqa: S608 - a unique_name() table


def _thread_id(conn: Any) -> int:
    """Return the server's id of `conn`'s session, leaving no transaction open on it."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        (row,) = cursor.fetchall()
    conn.commit()
    return int(row[0])


def wait_for_lock_waits(
    database: Database,
    threads: set[int],
    timeout: float = WAIT,
    running: Sequence[Future[Any]] = (),
) -> None:
    """Return once every one of the connections `threads` has a statement executing on the
    server while the caller's transaction holds the lock it needs (the key's row, a business
    row): each is then waiting on that lock, as it cannot finish before that transaction ends.
    Fail after `timeout` seconds, or as soon as one of the `running` calls has ended (with its
    own error).

    The server's process list is read, not InnoDB's list of waiting transactions
    (information_schema.innodb_trx): that one is a cache, and with other tests' storms of claims
    on the same server a waiting claim was missing from it for 30 s."""
    placeholders = ", ".join("%s" for _ in threads)
    query = (
        "SELECT COUNT(*) FROM information_schema.processlist "  # noqa: S608 - placeholders only
        f"WHERE id IN ({placeholders}) AND command = 'Query' AND info IS NOT NULL"
    )
    deadline = time.monotonic() + timeout
    while True:
        (count,) = database.execute(query, tuple(threads))[0]
        if count == len(threads):
            return
        for call in running:
            if call.done():
                call.result()  # raises the call's own error
                raise AssertionError("a duplicate ended without waiting on the key")
        assert time.monotonic() < deadline, f"{len(threads) - count} connections never waited"
        time.sleep(0.01)


def _deadlocks(database: Database) -> int | None:
    """The server's count of deadlocks so far (MariaDB's `Innodb_deadlocks`), if it keeps one."""
    rows = database.execute("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
    return int(rows[0][1]) if rows else None


@pytest.fixture
def prepared(mysql_database: Database, clock: ManualClock) -> Database:
    """The MySQL database with its records table made, before any transaction races."""
    store = mysql_database.store(clock)
    try:
        store.get(Identity("payments", "tenant-a", "k1"))
    finally:
        store.close()
    return mysql_database


def test_b29_mysql_savepoint_follows_the_outer_transaction(
    prepared: Database, clock: ManualClock
) -> None:
    """Inside the caller's open transaction the block is a savepoint: the caller's rollback
    undoes the record with the writes, the caller's commit keeps both."""
    options = _options(prepared, clock)
    conn = prepared.connect()
    try:
        for outer_commits in (False, True):
            _insert(conn, prepared, f"outer-{outer_commits}", "outer")
            with transactions.mysql(conn, **options) as tx:
                assert not tx.replay
                _insert(conn, prepared, f"inner-{outer_commits}")
                tx.complete(b"ok")
            if outer_commits:
                conn.commit()
            else:
                conn.rollback()
    finally:
        conn.close()
    assert sorted(row[0] for row in prepared.payment_rows()) == ["inner-True", "outer-True"]


def test_b29_aiomysql_savepoint_follows_the_outer_transaction(
    prepared: Database, clock: ManualClock
) -> None:
    """The same with aiomysql: a savepoint inside the caller's transaction, rolled back or
    committed with it."""
    options = _options(prepared, clock)
    insert = f"INSERT INTO {prepared.payments} VALUES (%s, %s, 1)"  # noqa: S608 - a unique_name() table

    async def main() -> None:
        conn = await prepared.aconnect()
        try:
            for outer_commits in (False, True):
                async with conn.cursor() as cursor:
                    await cursor.execute(insert, (f"outer-{outer_commits}", "outer"))
                async with transactions.mysql(conn, **options) as tx:
                    assert not tx.replay
                    async with conn.cursor() as cursor:
                        await cursor.execute(insert, (f"inner-{outer_commits}", "k1"))
                    tx.complete(b"ok")
                await (conn.commit() if outer_commits else conn.rollback())
        finally:
            await conn.ensure_closed()

    asyncio.run(main())
    assert sorted(row[0] for row in prepared.payment_rows()) == ["inner-True", "outer-True"]


def test_cursor_classes_of_the_caller_do_not_matter(prepared: Database, clock: ManualClock) -> None:
    """A connection whose cursors make dicts works: the records are read as tuples."""
    import pymysql

    for _ in range(2):
        conn = prepared.connect(cursorclass=pymysql.cursors.DictCursor)
        try:
            with transactions.mysql(conn, **_options(prepared, clock)) as tx:
                if not tx.replay:
                    tx.complete(b"ok")
        finally:
            conn.close()
        assert tx.outcome == b"ok"
    assert tx.replay


def _duplicate_race(
    database: Database,
    clock: ManualClock,
    isolation: str,
    *,
    first_commits: bool,
    duplicates: int = 1,
) -> list[bool]:
    """Hold the key in a first transaction until `duplicates` others wait on its row lock (in
    threads, each on its own connection at `isolation`), then end it; return whether each
    duplicate replayed."""
    options = _options(database, clock)
    first = database.connect()
    connections = {}
    for _ in range(duplicates):
        conn = database.connect()
        with conn.cursor() as cursor:
            cursor.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation}")
        connections[_thread_id(conn)] = conn

    def duplicate(thread: int) -> bool:
        conn = connections[thread]
        with transactions.mysql(conn, **options) as again:
            if again.replay:
                # the first's outcome, or after its rollback the one duplicate's that ran
                assert again.outcome == (b"first" if first_commits else b"duplicate")
                return True
            _insert(conn, database, f"dup-{thread}")
            again.complete(b"duplicate")
        return False

    pool = ThreadPoolExecutor(duplicates)
    try:
        with contextlib.suppress(BoomError), transactions.mysql(first, **options) as tx:
            _insert(first, database, "first")
            tx.complete(b"first")
            waiting = [pool.submit(duplicate, thread) for thread in connections]
            wait_for_lock_waits(database, set(connections), running=waiting)
            _fail_unless(first_commits)
        return [future.result(WAIT) for future in waiting]
    finally:
        pool.shutdown(wait=True)
        first.close()
        for conn in connections.values():
            conn.close()


def _fail_unless(commit: bool) -> None:
    """Raise in a transaction that is to roll back."""
    if not commit:
        raise BoomError


@pytest.mark.parametrize("isolation", ISOLATION_LEVELS)
def test_b14_a_duplicate_waits_on_the_key_then_replays_the_commit(
    prepared: Database, clock: ManualClock, isolation: str
) -> None:
    """A duplicate's claim waits on the key's row lock while the first transaction runs and,
    once it commits, replays its outcome, at every isolation level."""
    assert _duplicate_race(prepared, clock, isolation, first_commits=True) == [True]
    assert [row[0] for row in prepared.payment_rows()] == ["first"]


@pytest.mark.parametrize("isolation", ISOLATION_LEVELS)
def test_b29_a_duplicate_waits_on_the_key_then_runs_after_a_rollback(
    prepared: Database, clock: ManualClock, isolation: str
) -> None:
    """A duplicate that waited on a first transaction which then rolls back claims the key
    itself and runs, at every isolation level: the first run left nothing."""
    assert _duplicate_race(prepared, clock, isolation, first_commits=False) == [False]
    (row,) = prepared.payment_rows()
    assert row[0].startswith("dup-")


def test_b14_deadlocked_duplicates_begin_again_and_replay_one_run(
    prepared: Database, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty duplicates wait on a claim that rolls back: InnoDB breaks their deadlocks by
    rolling victims back, each victim's claim begins again, and in the end exactly one runs
    and the nineteen others replay its outcome."""
    before = _deadlocks(prepared)
    with caplog.at_level(logging.DEBUG, logger="retrysafe"):
        replayed = _duplicate_race(
            prepared, clock, "REPEATABLE READ", first_commits=False, duplicates=20
        )
    assert sorted(replayed) == [False] + [True] * 19
    (row,) = prepared.payment_rows()
    assert row[0].startswith("dup-")
    restarts = [r for r in caplog.records if "deadlock's victim" in r.getMessage()]
    assert restarts  # claims were deadlock victims, and began again
    after = _deadlocks(prepared)
    if before is not None and after is not None:
        assert after - before >= len(restarts)


def test_b14_the_lock_wait_timeout_bounds_the_wait_with_in_flight(
    prepared: Database, clock: ManualClock
) -> None:
    """A duplicate waits on the key while the first transaction holds it; past the session's
    `innodb_lock_wait_timeout` it stops waiting with InFlightError, and replays once the
    first has committed."""
    options = _options(prepared, clock)
    first, second = prepared.connect(), prepared.connect()
    try:
        with second.cursor() as cursor:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
        with transactions.mysql(first, **options) as tx:
            with pytest.raises(InFlightError), transactions.mysql(second, **options):
                pass  # pragma: no cover - the claim never returns
            tx.complete(b"done")
        with transactions.mysql(second, **options) as again:
            assert again.replay
            assert again.outcome == b"done"
    finally:
        first.close()
        second.close()


def test_b29_a_deadlock_inside_the_callers_transaction_is_reported(
    prepared: Database, clock: ManualClock
) -> None:
    """A claim chosen as a deadlock's victim inside the caller's own transaction does not
    begin again (the caller's earlier writes went with it): it raises DeadlockRollbackError,
    a StoreUnavailableError, and the caller's write is gone; the other transaction's key and
    writes commit once."""
    options = _options(prepared, clock)
    _insert_committed(prepared, "row-x", "x")
    victim, other = prepared.connect(), prepared.connect()
    holds_key = threading.Event()
    results: dict[str, object] = {}

    def other_side() -> None:
        for number in range(50):  # a heavier transaction than the victim's
            _insert(other, prepared, f"other-{number}", "other")
        with transactions.mysql(other, **options) as tx:
            holds_key.set()
            with other.cursor() as cursor:  # waits on the victim's lock on row-x
                cursor.execute(f"UPDATE {prepared.payments} SET amount = 2 WHERE id = 'row-x'")  # noqa: S608 - a unique_name() table
            tx.complete(b"other")
        other.commit()
        results["other"] = "committed"

    try:
        other_thread = _thread_id(other)
        with victim.cursor() as cursor:
            cursor.execute(f"UPDATE {prepared.payments} SET amount = 3 WHERE id = 'row-x'")  # noqa: S608 - a unique_name() table
        worker = threading.Thread(target=other_side)
        worker.start()
        assert holds_key.wait(WAIT)
        wait_for_lock_waits(prepared, {other_thread})
        with (
            pytest.raises(DeadlockRollbackError) as caught,
            transactions.mysql(victim, **options),
        ):
            pass  # pragma: no cover - the claim is the deadlock's victim
        assert isinstance(caught.value, StoreUnavailableError)
        worker.join(WAIT)
    finally:
        victim.close()
        other.close()
    assert results == {"other": "committed"}
    amounts = {row[0]: row[2] for row in prepared.payment_rows()}
    assert amounts["row-x"] == 2  # the victim's update rolled back, the other's committed
    store = prepared.store(clock)
    try:
        record = store.get(Identity("payments", "tenant-a", "k1"))
    finally:
        store.close()
    assert record is not None
    assert (record.state, record.outcome) == (State.DONE, b"other")


def _insert_committed(database: Database, payment_id: str, key: str) -> None:
    database.execute(f"INSERT INTO {database.payments} VALUES (?, ?, 1)", (payment_id, key))  # noqa: S608 - a unique_name() table


def test_the_records_table_is_made_outside_transactions_only(
    mysql_database: Database, clock: ManualClock
) -> None:
    """A missing records table is created before the block's transaction begins; inside the
    caller's open transaction, where MySQL's CREATE TABLE would commit it, it is refused, and
    the caller's transaction is left as it was."""
    options = _options(mysql_database, clock)
    conn = mysql_database.connect()
    try:
        _insert(conn, mysql_database, "outer", "outer")
        with (
            pytest.raises(ConfigurationError, match="does not exist"),
            transactions.mysql(conn, **options),
        ):
            pass  # pragma: no cover - refused at the claim
        conn.rollback()
        assert mysql_database.payment_rows() == []
        with transactions.mysql(conn, **options) as tx:
            tx.complete(b"made")
    finally:
        conn.close()
    store = mysql_database.store(clock)
    try:
        record = store.get(Identity("payments", "tenant-a", "k1"))
    finally:
        store.close()
    assert record is not None
    assert record.outcome == b"made"


def test_the_constructor_and_the_dispatch_name_mysql() -> None:
    """`transactions.mysql` refuses what is not a PyMySQL or aiomysql connection, and the
    errors that list the supported connections name MySQL's."""
    from retrysafe.transactions import _dispatch

    identity = Identity("n", "s", "k")
    with pytest.raises(TypeError, match="PyMySQL or aiomysql"):
        transactions.mysql(object(), identity=identity, fingerprint="fp")  # type: ignore[call-overload]
    calls: list[Callable[[], object]] = [
        lambda: _dispatch.sync_executor(object()),
        lambda: _dispatch.async_executor(object()),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="MySQL"):
            call()
    with pytest.raises(ConfigurationError, match="mysql\\+pymysql"):
        _dispatch.sync_records(object(), "t")
    with pytest.raises(ConfigurationError, match="mysql\\+aiomysql"):
        _dispatch.async_records(object(), "t")


def test_b29_a_store_claim_waits_for_the_open_transaction_on_mysql(
    prepared: Database, clock: ManualClock
) -> None:
    """A claim through the MySQL store (the middleware's path) made while the transaction is
    open waits on the key's row lock for its commit and finds the finished record, never a
    second execution."""
    options = _options(prepared, clock)
    store = prepared.store(clock)
    store.get(options["identity"])  # the store's pool and table check, before the race
    conn = prepared.connect()
    try:
        with ThreadPoolExecutor(1) as pool, transactions.mysql(conn, **options) as tx:
            waiting = pool.submit(store.claim, options["identity"], "fp", lease=30, retention=60)
            wait_for_a_claim_on(prepared)
            tx.complete(b"the outcome")
        claim = waiting.result(WAIT)
    finally:
        conn.close()
        store.close()
    assert not claim.acquired
    assert (claim.record.state, claim.record.outcome) == (State.DONE, b"the outcome")


def wait_for_a_claim_on(database: Database) -> None:
    """Return once a statement on the test's records table waits on a row lock."""
    query = (  # the process list, not innodb_trx: see wait_for_lock_waits
        "SELECT COUNT(*) FROM information_schema.processlist"
        " WHERE command = 'Query' AND info LIKE ? AND id <> CONNECTION_ID()"
    )
    deadline = time.monotonic() + WAIT
    while database.execute(query, (f"%{database.table}%",))[0][0] == 0:
        assert time.monotonic() < deadline, "no claim waited on the key"
        time.sleep(0.01)


def test_b14_fifty_duplicate_tasks_on_one_event_loop_with_aiomysql(
    prepared: Database, clock: ManualClock
) -> None:
    """50 asyncio tasks, each on its own aiomysql connection: one effect, 49 replays."""
    options = _options(prepared, clock)
    insert = f"INSERT INTO {prepared.payments} VALUES (%s, 'k1', 1)"  # noqa: S608 - a unique_name() table

    async def attempt(start: asyncio.Event, number: int) -> tuple[bool, bytes | None]:
        conn = await prepared.aconnect()
        try:
            await start.wait()
            async with transactions.mysql(conn, **options) as tx:
                if tx.replay:
                    return True, tx.outcome
                async with conn.cursor() as cursor:
                    await cursor.execute(insert, (f"p-{number}",))
                tx.complete(f"p-{number}".encode())
            return False, tx.outcome
        finally:
            await conn.ensure_closed()

    async def main() -> list[tuple[bool, bytes | None]]:
        start = asyncio.Event()
        tasks = [asyncio.create_task(attempt(start, number)) for number in range(50)]
        await asyncio.sleep(0)
        start.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert sum(1 for replay, _ in results if not replay) == 1
    (outcome,) = {outcome for _, outcome in results}
    assert outcome is not None
    assert [row[0] for row in prepared.payment_rows()] == [outcome.decode()]


def test_b29_sqlalchemy_savepoint_follows_the_sessions_transaction(
    mysql_database: Database, clock: ManualClock
) -> None:
    """Inside a session's open transaction the block is a savepoint (`begin_nested`), rolled
    back or committed with the session's transaction; a records table missing until then is
    made before the savepoint, since the session has run nothing yet."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import NullPool

    options = _options(mysql_database, clock)
    insert = text(f"INSERT INTO {mysql_database.payments} VALUES (:id, :key, 1)")  # noqa: S608 - a unique_name() table
    engine = create_engine(mysql_database.sqlalchemy_url(), poolclass=NullPool)
    try:
        for outer_commits in (False, True):
            with Session(engine) as session:
                session.begin()
                with transactions.sqlalchemy(session, **options) as tx:
                    assert not tx.replay
                    session.execute(insert, {"id": f"inner-{outer_commits}", "key": "k1"})
                    tx.complete(b"ok")
                session.execute(insert, {"id": f"outer-{outer_commits}", "key": "outer"})
                if outer_commits:
                    session.commit()
                else:
                    session.rollback()
    finally:
        engine.dispose()
    assert sorted(row[0] for row in mysql_database.payment_rows()) == ["inner-True", "outer-True"]


def test_b29_async_sqlalchemy_savepoint_follows_the_sessions_transaction(
    prepared: Database, clock: ManualClock
) -> None:
    """The same with an `AsyncSession` on aiomysql: rolled back with the session's
    transaction, then committed with it."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.pool import NullPool

    options = _options(prepared, clock)
    insert = text(f"INSERT INTO {prepared.payments} VALUES (:id, :key, 1)")  # noqa: S608 - a unique_name() table

    async def main() -> None:
        url = prepared.sqlalchemy_url(asynchronous=True)
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            for outer_commits in (False, True):
                async with AsyncSession(engine) as session:
                    await session.execute(insert, {"id": f"outer-{outer_commits}", "key": "o"})
                    async with transactions.sqlalchemy(session, **options) as tx:
                        assert not tx.replay
                        await session.execute(insert, {"id": f"inner-{outer_commits}", "key": "k1"})
                        tx.complete(b"ok")
                    await (session.commit() if outer_commits else session.rollback())
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert sorted(row[0] for row in prepared.payment_rows()) == ["inner-True", "outer-True"]
