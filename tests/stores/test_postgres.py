"""The PostgreSQL store beyond the shared contract: races across processes and threads, schema
creation, table names, URL options, LISTEN/NOTIFY waits, batched purges and unreachable servers.

Every test works on its own tables (`unique_name()`) and drops them afterwards; the server is
shared with other test runs.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import anyio
import psycopg
import pytest
from psycopg import sql

from retrysafe import (
    ConfigurationError,
    Identity,
    ManualClock,
    State,
    StoreError,
    StoreUnavailableError,
    open_store,
)
from retrysafe.stores.postgres import AsyncPostgresStore, PostgresStore
from tests.conftest import unique_name
from tests.servers import refused_port
from tests.stores.conftest import OpenStore, concrete

LEASE = 30.0
RETENTION = 3600.0


def with_options(url: str, **options: object) -> str:
    """Return `url` with query options added."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{urlencode(options)}"


def ident(key: str = "key-1") -> Identity:
    """An identity in this module's namespace."""
    return Identity("pg-test", "tenant", key)


def drop_tables(postgres_url: str, *tables: str) -> None:
    """Drop tables this module created."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for table in tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


@pytest.fixture
def tables(postgres_url: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh table names, each dropped after the test."""
    made: list[str] = []

    def make(name: str | None = None) -> str:
        made.append(name or unique_name())
        return made[-1]

    yield make
    drop_tables(postgres_url, *made)


@pytest.fixture
def table_url(postgres_url: str, tables: Callable[[], str]) -> str:
    """A store URL on a fresh table."""
    return with_options(postgres_url, table=tables())


# --- races -----------------------------------------------------------------------------------


def _claim_in_child(url: str, keys: list[str], seed: int, barrier: Any, results: Any) -> None:
    """Run in a child process: claim every key, in a shuffled order, once all children are ready."""
    store = open_store(url)
    try:
        store.get(ident("warm-up"))  # pool and schema ready before the race starts
        order = list(keys)
        random.Random(seed).shuffle(order)
        barrier.wait(timeout=60)
        outcome = []
        for key in order:
            claim = store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)
            outcome.append((key, claim.acquired, claim.token))
        results.put(outcome)
    finally:
        store.close()


def test_b7_one_winner_per_key_among_4_processes(table_url: str) -> None:
    """Four OS processes claiming the same ten keys at once: each key has exactly one winner."""
    # Closed at once: a store left to the collector can be collected mid-test, on its own
    # pool's worker thread, which then fails to join itself.
    with contextlib.closing(open_store(table_url)) as store:
        store.create_schema()  # type: ignore[attr-defined]
    keys = [f"race-{index}" for index in range(10)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    results = context.Queue()
    children = [
        context.Process(target=_claim_in_child, args=(table_url, keys, seed, barrier, results))
        for seed in range(4)
    ]
    for child in children:
        child.start()
    try:
        claims = [claim for _ in children for claim in results.get(timeout=90)]
    finally:
        for child in children:
            child.join(timeout=30)
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    for key in keys:
        on_key = [(acquired, token) for k, acquired, token in claims if k == key]
        winners = [token for acquired, token in on_key if acquired]
        assert len(on_key) == 4
        assert len(winners) == 1
        assert {token for _, token in on_key} == set(winners)  # losers saw the winner's record


def test_b7_one_winner_per_key_among_50_threads(open_face: OpenStore, table_url: str) -> None:
    """Fifty threads over three stores claiming five keys: each key has exactly one winner."""
    stores = [open_face(table_url) for _ in range(3)]
    stores[0].get(ident("warm-up"))
    keys = [f"race-{index}" for index in range(5)]
    barrier = threading.Barrier(50)

    def contend(index: int) -> list[tuple[str, bool]]:
        order = list(keys)
        random.Random(index).shuffle(order)
        barrier.wait(timeout=60)
        store = stores[index % len(stores)]
        return [
            (key, store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION).acquired)
            for key in order
        ]

    with ThreadPoolExecutor(max_workers=50) as pool:
        claims = [claim for result in pool.map(contend, range(50)) for claim in result]
    for key in keys:
        assert [acquired for k, acquired in claims if k == key].count(True) == 1


def test_b7_one_winner_among_50_tasks(table_url: str) -> None:
    """Fifty tasks on one event loop claiming one key through one async store: one winner."""

    async def main() -> list[bool]:
        store = AsyncPostgresStore.from_url(table_url)
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


def _blocked_on_a_lock(postgres_url: str, application: str) -> bool:
    """Return whether a connection of `application` is waiting for a lock."""
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = %s AND wait_event_type = 'Lock'"
    )
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(query, [application]).fetchone()
    return row is not None and row[0] > 0


@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_b7_a_claim_waiting_on_an_uncommitted_insert_sees_its_outcome(
    open_face: OpenStore, postgres_url: str, tables: Callable[[], str], ending: str
) -> None:
    """A claim that waits on another transaction's insert of the key returns that record once it
    commits (read again: the statement's snapshot predates it), or claims the key after a
    rollback."""
    table = tables()
    application = unique_name("rs_claimer")
    clock = ManualClock()
    store = open_face(with_options(postgres_url, table=table, application_name=application), clock)
    store.get(ident("warm-up"))  # the table exists before the other transaction uses it
    other = psycopg.connect(postgres_url)
    try:
        insert = sql.SQL(
            "INSERT INTO {} (id, namespace, scope, key, fingerprint, state, token, created_at,"
            " lease_expires_at, expires_at, outcome)"
            " VALUES (%s, 'pg-test', 'tenant', 'key-1', 'fp', 'done', 'theirs', %s, %s, %s, 'out')"
        ).format(sql.Identifier(table))
        now = clock.now()
        other.execute(insert, [ident().digest(), now, now, now + RETENTION])
        claims: list[Any] = []
        thread = threading.Thread(
            target=lambda: claims.append(
                store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
            )
        )
        thread.start()
        for delay in [0.01] * 1000:
            if _blocked_on_a_lock(postgres_url, application):
                break
            time.sleep(delay)
        other.commit() if ending == "commit" else other.rollback()
        thread.join(timeout=30)
    finally:
        other.close()
    assert len(claims) == 1
    claim = claims[0]
    if ending == "commit":
        assert not claim.acquired
        assert claim.record.token == "theirs"
        assert claim.record.outcome == b"out"
    else:
        assert claim.acquired
        assert claim.record.token != "theirs"


# --- unreachable server, errors ----------------------------------------------------------------


@pytest.mark.parametrize("operation", ["claim", "wait"])
def test_b20_dead_port_is_unavailable_within_the_timeout(
    open_face: OpenStore, operation: str
) -> None:
    """A store pointed at a port nothing listens on raises StoreUnavailableError, and soon."""
    url = f"postgresql://postgres@127.0.0.1:{refused_port()}/test?connect_timeout=1&pool_timeout=2"
    store = open_face(url)
    actions: dict[str, Callable[[], object]] = {
        "claim": lambda: store.claim(ident(), "fp", lease=LEASE, retention=RETENTION),
        "wait": lambda: store.wait(ident(), timeout=60),
    }
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        actions[operation]()
    assert time.monotonic() - started < 2 + 5  # pool_timeout, plus generous slack


def test_other_database_errors_are_store_errors(
    open_face: OpenStore, postgres_url: str, tables: Callable[[], str]
) -> None:
    """A table of the wrong shape fails with StoreError, not a psycopg error, not unavailable."""
    table = tables()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id INTEGER)").format(sql.Identifier(table)))
    store = open_face(with_options(postgres_url, table=table))
    with pytest.raises(StoreError) as caught:
        store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert not isinstance(caught.value, StoreUnavailableError)
    assert isinstance(caught.value.__cause__, psycopg.Error)


# --- schema, table names, URL options ----------------------------------------------------------


def _index_count(postgres_url: str, table: str) -> int:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s", [table])
        return int(row.fetchone()[0])  # type: ignore[index]


def test_schema_creation_is_concurrent_and_idempotent(
    postgres_url: str, tables: Callable[[], str]
) -> None:
    """Eight stores creating one table at once (first use or create_schema) all succeed, and
    creating it again changes nothing."""
    table = tables()
    url = with_options(postgres_url, table=table)
    stores = [PostgresStore.from_url(url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))

    def first_use(index: int) -> None:
        barrier.wait(timeout=60)
        if index % 2:
            stores[index].create_schema()
        else:
            stores[index].claim(ident(f"k{index}"), "fp", lease=LEASE, retention=RETENTION)

    try:
        with ThreadPoolExecutor(max_workers=len(stores)) as pool:
            list(pool.map(first_use, range(len(stores))))
        assert _index_count(postgres_url, table) == 3  # primary key, expires_at, created_at
        stores[1].create_schema()
        anyio.run(_create_schema_async, url)
        assert _index_count(postgres_url, table) == 3
        assert len(stores[0].list_records()) == 4
    finally:
        for store in stores:
            store.close()


async def _create_schema_async(url: str) -> None:
    store = AsyncPostgresStore.from_url(url)
    try:
        await store.create_schema()
    finally:
        await store.aclose()


BAD_TABLE_NAMES = [
    "",
    "1starts_with_digit",
    "has-dash",
    "has space",
    'quo"te',
    "x; DROP TABLE y",
    "schema.table",
    "ключ",
    "t" * 64,
]


@pytest.mark.parametrize("name", BAD_TABLE_NAMES, ids=range(len(BAD_TABLE_NAMES)))
def test_b34_invalid_table_names_are_refused(postgres_url: str, name: str) -> None:
    """A table name that is not a plain identifier of at most 63 characters is refused up front."""
    with pytest.raises(ConfigurationError):
        PostgresStore.from_url(with_options(postgres_url, table=name))
    with pytest.raises(ConfigurationError):
        AsyncPostgresStore(postgres_url, table=name)


def test_longest_table_names_keep_their_own_indexes_and_channels(
    postgres_url: str, tables: Callable[[], str]
) -> None:
    """Two 63-character table names sharing a long prefix get distinct indexes and channels."""
    prefix = unique_name().ljust(61, "x")
    first, second = tables(prefix + "_a"), tables(prefix + "_b")
    stores = [PostgresStore.from_url(with_options(postgres_url, table=t)) for t in (first, second)]
    try:
        for store in stores:
            store.create_schema()
        assert _index_count(postgres_url, first) == 3
        assert _index_count(postgres_url, second) == 3
        assert stores[0].table.channel != stores[1].table.channel
    finally:
        for store in stores:
            store.close()


def test_url_options_and_libpq_parameters(table_url: str) -> None:
    """Store options are read from the URL; any other parameter reaches libpq."""
    application = unique_name("rs_app")
    url = with_options(
        table_url,
        connect_timeout=3,
        pool_min=1,
        pool_max=3,
        pool_timeout=4,
        application_name=application,
    )
    store = PostgresStore.from_url(url)
    try:
        store.get(ident())
        assert store._pool.max_size == 3
        assert store._pool.timeout == 4
        with psycopg.connect(table_url.split("?", 1)[0]) as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            row = conn.execute(query, [application]).fetchone()
        assert row is not None
        assert row[0] >= 1
    finally:
        store.close()


@pytest.mark.parametrize(
    "options",
    [
        {"pool_max": 0},
        {"pool_min": 5, "pool_max": 2},
        {"pool_timeout": "soon"},
        {"connect_timeout": 0},
        {"no_such_option": 1},
    ],
)
def test_bad_url_options_are_refused(postgres_url: str, options: dict[str, object]) -> None:
    """Invalid store options, and parameters libpq does not know, fail when the store is built."""
    with pytest.raises(ConfigurationError):
        PostgresStore.from_url(with_options(postgres_url, **options))


def test_both_url_schemes_open_a_postgres_store(postgres_url: str) -> None:
    """`postgresql://` and `postgres://` both open the PostgreSQL store."""
    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://", 1)):
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        store.close()


def test_importing_retrysafe_does_not_import_psycopg() -> None:
    """`import retrysafe` works without the postgres extra: psycopg loads only with the store."""
    code = "import sys, retrysafe; sys.exit('psycopg' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- wait ----------------------------------------------------------------------------------------


def _waiter_is_listening(postgres_url: str, application: str) -> bool:
    """Return whether the waiter's connection has read (and marked) the record after its LISTEN."""
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = %s AND state = 'idle' AND query LIKE %s"
    )
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(query, [application, "%WITH marked AS%"]).fetchone()
    return row is not None and row[0] > 0


@pytest.mark.parametrize("length", ["short", "longest"])
def test_b15_wait_is_woken_by_notify(
    open_face: OpenStore, postgres_url: str, tables: Callable[[], str], length: str
) -> None:
    """A completion in another store wakes a listening waiter: with the periodic re-read off and
    the lease far away, only the notification can hand it the outcome before its timeout."""
    table = tables(None if length == "short" else unique_name().ljust(63, "x"))
    application = unique_name("rs_waiter")
    clock = ManualClock()
    holder = open_face(with_options(postgres_url, table=table), clock)
    waiter = open_face(with_options(postgres_url, table=table, application_name=application), clock)
    concrete(waiter)._recheck_interval = 3600.0
    claim = holder.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(waiter.wait(ident(), timeout=20)))
    thread.start()
    try:
        for delay in [0.01] * 1000:
            if _waiter_is_listening(postgres_url, application):
                break
            time.sleep(delay)
        holder.complete(ident(), claim.token, b"done", retention=RETENTION)
    finally:
        thread.join(timeout=30)
    assert result
    record = result[0]
    assert record is not None
    assert record.state is State.DONE
    assert record.outcome == b"done"


def _notified_ids(postgres_url: str, channel: str, action: Callable[[], object]) -> list[str]:
    """Run `action` while listening on `channel` and return the payloads it sent.

    A marker notification sent after `action` ends the read: PostgreSQL delivers notifications
    in commit order, so everything `action` sent arrives before it, and no timing is involved.
    """
    with psycopg.connect(postgres_url, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        action()
        with psycopg.connect(postgres_url, autocommit=True) as other:
            other.execute("SELECT pg_notify(%s, 'marker')", [channel])
        payloads: list[str] = []
        for notify in listener.notifies(timeout=30):
            if notify.payload == "marker":
                return payloads
            payloads.append(notify.payload)
    raise AssertionError("the marker notification never arrived")


def test_only_watched_records_notify(postgres_url: str, table_url: str) -> None:
    """Completion, release and delete send NOTIFY only for a record a waiter's read marked, so
    completions nobody waits for do not queue on PostgreSQL's notification lock."""
    clock = ManualClock()
    store = PostgresStore.from_url(table_url, clock=clock)
    channel = store.table.channel

    def mark(identity: Identity) -> None:
        with store._pool.connection() as conn:
            params = {"id": identity.digest(), "now": clock.now()}
            assert conn.execute(store.table.watch, params).fetchall()[0][-1] is True

    def settle_each(marked: bool) -> None:
        for end in ["complete", "release", "delete"]:
            identity = ident(f"{end}-{marked}")
            claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
            if marked:
                mark(identity)
            if end == "complete":
                store.complete(identity, claim.token, b"done", retention=RETENTION)
            elif end == "release":
                store.release(identity, claim.token)
            else:
                assert store.delete(identity)

    try:
        assert _notified_ids(postgres_url, channel, lambda: settle_each(False)) == []
        expected = [ident(f"{end}-True").digest() for end in ["complete", "release", "delete"]]
        assert _notified_ids(postgres_url, channel, lambda: settle_each(True)) == expected
    finally:
        store.close()


def test_a_waiter_never_blocks_on_a_locked_row_and_polls_until_it_marks_it(
    open_face: OpenStore, postgres_url: str, tables: Callable[[], str]
) -> None:
    """While another transaction holds the record's row, a waiter reads past the lock (it does
    not wait for that transaction) and, unable to mark the row, polls: with the periodic re-read
    off it still gets the outcome completed after the lock is gone."""
    table = tables()
    application = unique_name("rs_waiter")
    clock = ManualClock()
    holder = open_face(with_options(postgres_url, table=table), clock)
    waiter = open_face(with_options(postgres_url, table=table, application_name=application), clock)
    concrete(waiter)._recheck_interval = 3600.0
    claim = holder.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    locking = psycopg.connect(postgres_url)
    try:
        query = sql.SQL("SELECT 1 FROM {} WHERE id = %s FOR UPDATE").format(sql.Identifier(table))
        locking.execute(query, [ident().digest()])
        early: list[Any] = []
        thread = threading.Thread(target=lambda: early.append(waiter.wait(ident(), timeout=0.2)))
        thread.start()
        thread.join(timeout=30)  # a waiter blocked behind the lock would still be waiting
        assert len(early) == 1
        assert early[0].state is State.IN_FLIGHT
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(waiter.wait(ident(), timeout=20)))
        thread.start()
        for delay in [0.01] * 1000:
            if _waiter_is_listening(postgres_url, application):
                break
            time.sleep(delay)
    finally:
        locking.rollback()
        locking.close()
    holder.complete(ident(), claim.token, b"done", retention=RETENTION)
    thread.join(timeout=30)
    assert len(result) == 1
    assert result[0].outcome == b"done"


_OLD_SCHEMA = """
CREATE TABLE {} (
    id TEXT PRIMARY KEY, namespace BYTEA NOT NULL, scope BYTEA NOT NULL, key BYTEA NOT NULL,
    fingerprint BYTEA NOT NULL, state TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    token TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    lease_expires_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    outcome BYTEA, recovery_point BYTEA, taken_over BOOLEAN NOT NULL DEFAULT FALSE
)
"""


def test_a_table_from_before_watched_gains_the_column_and_keeps_its_records(
    open_face: OpenStore, postgres_url: str, tables: Callable[[], str]
) -> None:
    """A table created without the `watched` column gets it on first use; its records stay."""
    table = tables()
    clock = ManualClock()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL(_OLD_SCHEMA).format(sql.Identifier(table)))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} VALUES (%s, 'pg-test', 'tenant', 'old', 'fp', 'done', 't', "
                "%s, %s, %s, 'kept', NULL, FALSE)"
            ).format(sql.Identifier(table)),
            [ident("old").digest(), clock.now(), clock.now(), clock.now() + RETENTION],
        )
    store = open_face(with_options(postgres_url, table=table), clock)
    record = store.get(ident("old"))
    assert record is not None
    assert record.outcome == b"kept"
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert store.complete(ident(), claim.token, b"new", retention=RETENTION).outcome == b"new"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        column = sql.SQL("SELECT count(*) FROM {} WHERE NOT watched").format(sql.Identifier(table))
        assert conn.execute(column).fetchone() == (2,)
    store.close()


def test_b15_waiters_without_a_spare_connection_poll(table_url: str) -> None:
    """With no pooled connection to spare for LISTEN, waiters fall back to polling and still
    get the outcome; the connection a waiter listened on goes back to the pool clean."""
    holder = PostgresStore.from_url(table_url)
    waiter = PostgresStore.from_url(with_options(table_url, pool_min=1, pool_max=2))
    claim = holder.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            waits = [pool.submit(waiter.wait, ident(), timeout=20) for _ in range(3)]
            time.sleep(0.3)
            holder.complete(ident(), claim.token, b"done", retention=RETENTION)
            records = [future.result(timeout=30) for future in waits]
        assert [r.outcome if r else None for r in records] == [b"done"] * 3
        with waiter._pool.connection() as first, waiter._pool.connection() as second:
            for conn in (first, second):
                assert conn.execute("SELECT pg_listening_channels()").fetchall() == []
    finally:
        holder.close()
        waiter.close()


def test_b15_wait_returns_at_lease_expiry(open_face: OpenStore, table_url: str) -> None:
    """A waiter returns the in-flight record once its lease expires, without any notification."""
    store = open_face(table_url)
    claim = store.claim(ident(), "fp", lease=0.3, retention=RETENTION)
    record = store.wait(ident(), timeout=20)
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert record.token == claim.token
    assert record.lease_expires_at <= store.clock.now()


def test_b15_cancelled_waiters_do_not_leak_connections(table_url: str) -> None:
    """Waiters cancelled mid-wait give their connections back: the pool still serves afterwards."""

    async def main() -> None:
        store = AsyncPostgresStore.from_url(with_options(table_url, pool_max=2, pool_timeout=3))
        try:
            claim = await store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
            for _ in range(5):
                with anyio.move_on_after(0.1):
                    await store.wait(ident(), timeout=20)
            async with anyio.create_task_group() as group:
                group.start_soon(functools.partial(store.wait, ident(), timeout=20))
                await anyio.sleep(0.2)
                await store.complete(ident(), claim.token, b"done", retention=RETENTION)
            record = await store.wait(ident(), timeout=5)
            assert record is not None
            assert record.outcome == b"done"
            assert store._listeners == 0
        finally:
            await store.aclose()

    anyio.run(main)


def test_a_large_binary_outcome_round_trips_byte_for_byte(
    open_face: OpenStore, table_url: str
) -> None:
    """A 1 MiB outcome of every byte value comes back exact from complete (which does not echo
    it), get, a replaying claim and a wait, in either face."""
    outcome = bytes(range(256)) * 4096
    store = open_face(table_url)
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    done = store.complete(ident(), claim.token, outcome, retention=RETENTION)
    replay = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    waited = store.wait(ident(), timeout=5)
    got = store.get(ident())
    assert not replay.acquired
    for record in (done, replay.record, waited, got):
        assert record is not None
        assert record.outcome == outcome
        assert record == done


# --- purge ---------------------------------------------------------------------------------------


def test_b21_purge_in_bounded_batches(open_face: OpenStore, table_url: str) -> None:
    """purge_expired removes at most `limit` expired records a call and never live ones."""
    clock = ManualClock()
    store = open_face(table_url, clock)
    for index in range(25):
        store.claim(ident(f"old-{index}"), "fp", lease=1, retention=1)
    clock.advance(3)
    for index in range(3):
        store.claim(ident(f"live-{index}"), "fp", lease=LEASE, retention=RETENTION)
    assert [store.purge_expired(limit=10) for _ in range(4)] == [10, 10, 5, 0]
    assert store.purge_expired(limit=0) == 0
    assert store.stats().in_flight == 3


def test_b21_concurrent_purgers_share_the_work(table_url: str) -> None:
    """Four purgers running at once delete every expired record exactly once between them."""
    clock = ManualClock()
    stores = [PostgresStore.from_url(table_url, clock=clock) for _ in range(4)]
    try:
        for index in range(120):
            stores[0].claim(ident(f"old-{index}"), "fp", lease=1, retention=1)
        clock.advance(3)

        def purge_all(store: PostgresStore) -> int:
            total = 0
            while deleted := store.purge_expired(limit=7):
                total += deleted
            return total

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert sum(pool.map(purge_all, stores)) == 120
        assert stores[0].purge_expired() == 0
    finally:
        for store in stores:
            store.close()
