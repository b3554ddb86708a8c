"""The MySQL/MariaDB store beyond the shared contract: its URL, schema creation, table names,
binary-safe storage, connections lost or refused, other errors, purges and waits.

Races, deadlocks and lock waits are in `test_mysql_races.py`. Every test works on its own tables
(`unique_name()`) and drops them afterwards; the server is shared with other test runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import anyio
import pymysql
import pytest

from retrysafe import (
    ConfigurationError,
    FencedError,
    Identity,
    ManualClock,
    State,
    Store,
    StoreError,
    StoreUnavailableError,
    open_async_store,
    open_store,
)
from retrysafe.stores._sql.mysql import mysql_table
from retrysafe.stores._sql.mysql_connection import parse_url
from retrysafe.stores._sync.mysql_records import MySQLRecords
from retrysafe.stores.mysql import AsyncMySQLStore, MySQLStore
from tests.conftest import drop_mysql_tables, unique_name
from tests.servers import refused_port
from tests.stores.conftest import BlockingFacade, OpenStore, concrete

pytestmark = pytest.mark.mysql

LEASE = 30.0
RETENTION = 3600.0
BOUND = 30.0  # seconds any wait for another thread or the server may take before the test fails


def with_options(url: str, **options: object) -> str:
    """Return `url` with query options added."""
    return f"{url}{'&' if '?' in url else '?'}{urlencode(options)}"


def ident(key: str = "key-1") -> Identity:
    """An identity in this module's namespace."""
    return Identity("mysql-test", "tenant", key)


def admin(mysql_url: str, **more: Any) -> Any:
    """A PyMySQL connection of the test's own to the server, in autocommit (`more`: further
    arguments to `pymysql.connect`)."""
    options = parse_url(mysql_url.split("?", 1)[0])
    return pymysql.connect(
        host=options.host,
        port=options.port,
        user=options.user,
        password=options.password,
        database=options.database,
        autocommit=True,
        ssl_disabled=True,
        **more,
    )


def query(mysql_url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of the test's own; return its rows."""
    conn = admin(mysql_url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, args or None)
            return list(cursor.fetchall())
    finally:
        conn.close()


@pytest.fixture
def tables(mysql_url: str) -> Iterator[Callable[..., str]]:
    """A factory of fresh table names, each dropped after the test."""
    made: list[str] = []

    def make(name: str | None = None) -> str:
        made.append(name or unique_name())
        return made[-1]

    yield make
    drop_mysql_tables(mysql_url, *made)


@pytest.fixture
def table_url(mysql_url: str, tables: Callable[..., str]) -> str:
    """A store URL on a fresh table."""
    return with_options(mysql_url, table=tables())


def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until `condition()` holds."""
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"not within {BOUND} s: {what}"
        time.sleep(0.01)


# --- the URL ---------------------------------------------------------------------------------


def test_url_parts_are_percent_decoded_and_options_read() -> None:
    """User, password and database are percent-decoded; the port defaults to 3306; the
    store's options come from the query string."""
    options = parse_url(
        "mysql://app%40eu:p%3Ass%2Fw%40rd@db.internal/my%2Ddb"
        "?table=keys&connect_timeout=2.5&pool_max=3&pool_timeout=4&lock_timeout=7&ssl=true"
    )
    assert (options.user, options.password, options.database) == ("app@eu", "p:ss/w@rd", "my-db")
    assert (options.host, options.port) == ("db.internal", 3306)
    assert (options.table, options.connect_timeout, options.pool_max) == ("keys", 2.5, 3)
    assert (options.pool_timeout, options.lock_timeout, options.ssl) == (4.0, 7, True)
    bare = parse_url("mysql://root@127.0.0.1:3307/test")
    assert (bare.port, bare.password, bare.table, bare.lock_timeout) == (
        3307,
        "",
        "retrysafe_records",
        None,
    )


BAD_URLS = [
    "mysql://root@127.0.0.1",  # no database
    "mysql://root@127.0.0.1/",  # no database
    "mysql://root@127.0.0.1/test/more",  # a path, not a database
    "mysql://127.0.0.1/test",  # no user
    "mysql://root@/test",  # no host
    "mysql://root@127.0.0.1:notaport/test",
    "mysql://root@127.0.0.1:70000/test",
    "mysql://root@127.0.0.1/test#fragment",
    "mysql://root@127.0.0.1/test?no_such_option=1",
    "mysql://root@127.0.0.1/test?sslmode=require",  # a libpq option: not passed on here
    "mysql://root@127.0.0.1/test?pool_max=0",
    "mysql://root@127.0.0.1/test?pool_max=many",
    "mysql://root@127.0.0.1/test?pool_timeout=0",
    "mysql://root@127.0.0.1/test?connect_timeout=-1",
    "mysql://root@127.0.0.1/test?lock_timeout=0",
    "mysql://root@127.0.0.1/test?table=has-dash",
    "mysqlx://root@127.0.0.1/test",
]


@pytest.mark.parametrize("url", BAD_URLS, ids=range(len(BAD_URLS)))
def test_bad_urls_are_refused_when_the_store_is_built(url: str) -> None:
    """A URL without a database, user or host, with a bad port, or with an unknown or invalid
    option is refused with ConfigurationError before anything connects."""
    with pytest.raises(ConfigurationError):
        MySQLStore.from_url(url)
    with pytest.raises(ConfigurationError):
        AsyncMySQLStore.from_url(url)


def test_errors_never_show_the_password() -> None:
    """A refused URL's message names the URL with its password masked."""
    with pytest.raises(ConfigurationError) as caught:
        parse_url("mysql://app:hunter2@db/app?bogus=1&x=hunter2")
    assert "hunter2@" not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        parse_url("mysql://app:hunter2@db")
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


def test_open_store_builds_both_faces_from_a_mysql_url(table_url: str) -> None:
    """`open_store` and `open_async_store` build the MySQL store for `mysql://`."""
    store = open_store(table_url)
    assert isinstance(store, MySQLStore)
    store.close()
    assert isinstance(open_async_store(table_url), AsyncMySQLStore)


def test_importing_retrysafe_does_not_import_the_drivers() -> None:
    """`import retrysafe` works without the mysql extra: the drivers load only with the store."""
    code = "import sys, retrysafe; sys.exit(any(m in sys.modules for m in ('pymysql', 'aiomysql')))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- schema and table names ------------------------------------------------------------------


def test_schema_creation_is_concurrent_and_idempotent(
    mysql_url: str, tables: Callable[..., str]
) -> None:
    """Eight stores creating one table at once (first use or create_schema) all succeed, and
    creating it again changes nothing."""
    table = tables()
    url = with_options(mysql_url, table=table)
    stores = [MySQLStore.from_url(url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))

    def first_use(index: int) -> None:
        barrier.wait(timeout=BOUND)
        if index % 2:
            stores[index].create_schema()
        else:
            stores[index].claim(ident(f"k{index}"), "fp", lease=LEASE, retention=RETENTION)

    try:
        with ThreadPoolExecutor(max_workers=len(stores)) as pool:
            list(pool.map(first_use, range(len(stores))))
        stores[1].create_schema()
        anyio.run(_create_schema_async, url)
        indexes = query(
            mysql_url,
            "SELECT DISTINCT index_name FROM information_schema.statistics"
            " WHERE table_schema = DATABASE() AND table_name = %s",
            table,
        )
        assert sorted(row[0] for row in indexes) == ["PRIMARY", "created_at", "expires_at"]
        assert len(stores[0].list_records()) == 4
    finally:
        for store in stores:
            store.close()


async def _create_schema_async(url: str) -> None:
    store = AsyncMySQLStore.from_url(url)
    try:
        await store.create_schema()
    finally:
        await store.aclose()


BAD_TABLE_NAMES = ["", "1starts_with_digit", "has-dash", "has space", "ba`ck", "x; DROP TABLE y",
                   "db.table", "ключ", "t" * 65]  # fmt: skip


@pytest.mark.parametrize("name", BAD_TABLE_NAMES, ids=range(len(BAD_TABLE_NAMES)))
def test_b34_invalid_table_names_are_refused(mysql_url: str, name: str) -> None:
    """A table name that is not a plain identifier of at most 64 characters is refused up front."""
    with pytest.raises(ConfigurationError):
        MySQLStore.from_url(with_options(mysql_url, table=name))
    with pytest.raises(ConfigurationError):
        AsyncMySQLStore(host="127.0.0.1", user="root", database="test", table=name)


def test_the_longest_table_name_works(
    open_face: OpenStore, mysql_url: str, tables: Callable[..., str]
) -> None:
    """A 64-character table name (MySQL's longest identifier) holds records like any other."""
    table = tables(unique_name().ljust(64, "x"))
    store = open_face(with_options(mysql_url, table=table))
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.complete(ident(), claim.token, b"done", retention=RETENTION)
    assert store.get(ident()) is not None


# --- what is stored --------------------------------------------------------------------------


def test_b10_large_binary_outcomes_round_trip_byte_for_byte(
    open_face: OpenStore, table_url: str
) -> None:
    """Outcomes of every byte value, up to several MiB, come back exactly as stored."""
    store = open_face(table_url)
    outcomes = [b"", b"\x00", bytes(range(256)) * 64, os.urandom(3 * 1024 * 1024)]
    for index, outcome in enumerate(outcomes):
        identity = ident(f"k{index}")
        claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
        assert (
            store.complete(identity, claim.token, outcome, retention=RETENTION).outcome == outcome
        )
        record = store.get(identity)
        assert record is not None
        assert record.outcome == outcome


LONG_KEYS = ["k" * 100_000, "😀" * 20_000, "\x00" * 1000 + "'\\%s`"]


@pytest.mark.parametrize("key", LONG_KEYS, ids=["100k-ascii", "emoji", "nul-and-quotes"])
def test_b34_keys_of_any_length_and_any_character_round_trip(
    open_face: OpenStore, table_url: str, key: str
) -> None:
    """Keys far beyond InnoDB's index limit, and 4-byte UTF-8, are stored whole: the primary
    key is their digest; a key one character shorter is another record."""
    store = open_face(table_url)
    identity = Identity("ns", key, key)
    claim = store.claim(identity, key, lease=LEASE, retention=RETENTION)
    assert claim.acquired
    store.checkpoint(identity, claim.token, key)
    record = store.get(identity)
    assert record is not None
    assert (record.identity, record.fingerprint, record.recovery_point) == (identity, key, key)
    assert store.get(Identity("ns", key, key[:-1])) is None


def test_b16_a_renewal_at_the_same_instant_keeps_the_claim(
    open_face: OpenStore, table_url: str
) -> None:
    """Renewing (or checkpointing the same phase) to the values already stored is not a
    fencing: an update that changes nothing still finds the holder's row."""
    clock = ManualClock()
    store = open_face(table_url, clock)
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert (
        store.renew(ident(), claim.token, lease=LEASE).lease_expires_at
        == claim.record.lease_expires_at
    )
    store.checkpoint(ident(), claim.token, "phase-1")
    assert store.checkpoint(ident(), claim.token, "phase-1").recovery_point == "phase-1"
    with pytest.raises(FencedError):
        store.renew(ident(), "not-the-token", lease=LEASE)


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["claim", "wait"])
def test_b20_dead_port_is_unavailable_within_the_timeout(
    open_face: OpenStore, operation: str
) -> None:
    """A store pointed at a port nothing listens on raises StoreUnavailableError, and soon."""
    store = open_face(
        f"mysql://root@127.0.0.1:{refused_port()}/test?connect_timeout=1&pool_timeout=2"
    )
    actions: dict[str, Callable[[], object]] = {
        "claim": lambda: store.claim(ident(), "fp", lease=LEASE, retention=RETENTION),
        "wait": lambda: store.wait(ident(), timeout=60),
    }
    with pytest.raises(StoreUnavailableError) as caught:
        actions[operation]()
    assert isinstance(caught.value.__cause__, pymysql.err.MySQLError)


def test_b20_a_server_that_never_greets_is_unavailable_within_the_timeout(
    open_face: OpenStore,
) -> None:
    """A port that accepts connections and never sends MySQL's greeting (another service, a
    stuck proxy) fails the call with StoreUnavailableError, not a hang: the handshake is bounded
    by `connect_timeout` like the TCP connect."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never accepts or sends
        port = silent.getsockname()[1]
        store = open_face(f"mysql://root@127.0.0.1:{port}/test?connect_timeout=1&pool_timeout=5")
        with pytest.raises(StoreUnavailableError) as caught:
            store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert isinstance(caught.value.__cause__, pymysql.err.OperationalError)
    assert caught.value.__cause__.args[0] == 2013  # lost connection: no handshake


def test_other_database_errors_are_store_errors(
    open_face: OpenStore, mysql_url: str, tables: Callable[..., str]
) -> None:
    """A table of the wrong shape fails with StoreError, not a driver error, not unavailable."""
    table = tables()
    query(mysql_url, f"CREATE TABLE `{table}` (id INT, taken_over INT)")
    store = open_face(with_options(mysql_url, table=table))
    with pytest.raises(StoreError) as caught:
        store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert not isinstance(caught.value, StoreUnavailableError)
    assert isinstance(caught.value.__cause__, pymysql.err.MySQLError)


def test_wrong_credentials_are_a_store_error(open_face: OpenStore, mysql_url: str) -> None:
    """A refused login is a StoreError naming the server's refusal."""
    options = parse_url(mysql_url)
    url = f"mysql://no_such_user_{os.getpid()}:x@{options.host}:{options.port}/{options.database}"
    with pytest.raises(StoreError, match=r"1045|Access denied"):
        open_face(url).get(ident())


def test_b20_a_connection_lost_mid_completion_leaves_the_record_as_it_was(
    open_face: OpenStore, mysql_url: str, tables: Callable[..., str]
) -> None:
    """A completion whose connection is killed while it waits for a row lock raises
    StoreUnavailableError and changes nothing; the store then carries on with a new connection
    and the completion lands."""
    table = tables()
    store = open_face(with_options(mysql_url, table=table, pool_max=2))
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    blocker = admin(mysql_url)
    errors: list[BaseException] = []
    try:
        with blocker.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(
                f"SELECT * FROM `{table}` WHERE id = %s FOR UPDATE",  # noqa: S608 - the test's table
                (ident().digest(),),
            )

        def complete() -> None:
            try:
                store.complete(ident(), claim.token, b"out", retention=RETENTION)
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=complete)
        thread.start()
        waiting = (
            "SELECT id FROM information_schema.processlist"
            " WHERE info LIKE %s AND info NOT LIKE '%%processlist%%' AND id <> CONNECTION_ID()"
        )
        statement = f"%UPDATE `{table}`%"
        eventually(
            lambda: bool(query(mysql_url, waiting, statement)), "the completion waits for the lock"
        )
        (victim,) = query(mysql_url, waiting, statement)
        query(mysql_url, f"KILL {int(victim[0])}")
        thread.join(timeout=BOUND)
        assert len(errors) == 1
        assert isinstance(errors[0], StoreUnavailableError)
    finally:
        blocker.rollback()
        blocker.close()
    record = store.get(ident())
    assert record is not None
    assert (record.state, record.token, record.outcome) == (State.IN_FLIGHT, claim.token, None)
    assert store.complete(ident(), claim.token, b"out", retention=RETENTION).outcome == b"out"


def test_b20_idle_connections_the_server_dropped_are_replaced(
    open_face: OpenStore, mysql_url: str, tables: Callable[..., str]
) -> None:
    """Connections killed while idle in the pool are pinged and replaced before they are lent
    (once idle past `check_after`), so the next call succeeds."""
    table = tables()
    store = open_face(with_options(mysql_url, table=table))
    concrete(store)._pool.check_after = 0.0
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    for thread_id in _idle_store_connections(mysql_url, store):
        query(mysql_url, f"KILL {thread_id}")
    assert store.complete(ident(), claim.token, b"out", retention=RETENTION).state is State.DONE


def _idle_store_connections(mysql_url: str, store: Store) -> list[int]:
    """The server thread ids of `store`'s idle pooled connections."""
    ids = [conn.thread_id() for conn, _ in concrete(store)._pool._idle]
    assert ids, "the store keeps no idle connection"
    return [int(thread_id) for thread_id in ids]


def test_the_sessions_run_at_read_committed_in_strict_mode(
    open_face: OpenStore, table_url: str
) -> None:
    """The store's connections read committed data (no gap locks for its purges) and refuse a
    value too long for its column rather than truncating it."""
    store = open_face(table_url)
    store.get(ident())
    conn, _ = concrete(store)._pool._idle[-1]
    portal_free = [
        "SELECT @@SESSION.sql_mode",
        "SHOW SESSION VARIABLES WHERE Variable_name IN ('tx_isolation', 'transaction_isolation')",
    ]
    rows = [_run_on(store, conn, sql) for sql in portal_free]
    assert "STRICT_ALL_TABLES" in rows[0][0][0]
    assert {row[1] for row in rows[1]} == {"READ-COMMITTED"}


def _run_on(store: Store, conn: Any, sql: str) -> list[tuple[Any, ...]]:
    """Run `sql` on one of `store`'s connections (on its event loop for the async face)."""
    if isinstance(store, BlockingFacade):

        async def run() -> list[tuple[Any, ...]]:
            cursor = await conn.cursor()
            await cursor.execute(sql)
            return list(await cursor.fetchall())

        return store._portal.call(run)  # type: ignore[no-any-return]
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


# --- purge and wait --------------------------------------------------------------------------


def test_b21_concurrent_purgers_delete_each_expired_record_once(
    mysql_url: str, table_url: str
) -> None:
    """Four threads purging in batches of 7 delete the 120 expired records between them, each
    once, and leave the live ones."""
    clock = ManualClock()
    store = MySQLStore.from_url(table_url, clock=clock)
    try:
        for index in range(120):
            claim = store.claim(ident(f"old-{index}"), "fp", lease=LEASE, retention=RETENTION)
            store.complete(ident(f"old-{index}"), claim.token, b"x", retention=10)
        clock.advance(11)
        for index in range(5):
            store.claim(ident(f"live-{index}"), "fp", lease=LEASE, retention=RETENTION)

        def purge(_: int) -> int:
            total = 0
            while deleted := store.purge_expired(limit=7):
                assert deleted <= 7
                total += deleted
            return total

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert sum(pool.map(purge, range(4))) == 120
        assert store.stats().in_flight == 5
        table = table_url.split("table=", 1)[1]
        count = f"SELECT COUNT(*) FROM `{table}`"  # noqa: S608 - the test's table
        assert query(mysql_url, count) == [(5,)]
    finally:
        store.close()


def test_b15_a_completion_here_wakes_the_waiter_at_once(
    open_face: OpenStore, table_url: str
) -> None:
    """A waiter on the store that completes the record is woken by that completion (the event
    it watches is set; a poll sets none), and gets the outcome. The completion comes once the
    waiter has read the record in flight and paused, and its pauses last the whole bound here,
    so only the wake-up can end them: a poll cannot see the completion first."""
    store = open_face(table_url)
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    wakeups = concrete(store)._wakeups
    watched: list[Any] = []
    pausing = threading.Event()
    watch, until = wakeups.watch, wakeups.until

    def pause(event: Any, seconds: float) -> Any:
        pausing.set()  # the read before this pause found the record in flight
        return until(event, BOUND)

    wakeups.watch = lambda record_id: watched.append(watch(record_id)) or watched[-1]
    wakeups.until = pause
    results: list[Any] = []
    waiter = threading.Thread(target=lambda: results.append(store.wait(ident(), timeout=BOUND)))
    waiter.start()
    assert pausing.wait(BOUND), "the waiter read the record in flight and paused"
    store.complete(ident(), claim.token, b"done", retention=RETENTION)
    waiter.join(timeout=BOUND)
    assert results[0].outcome == b"done"
    assert any(event.is_set() for event in watched)
    assert not wakeups._waiting


def test_b15_a_completion_elsewhere_is_seen_by_polling(
    open_face: OpenStore, table_url: str
) -> None:
    """A waiter whose record another process completes sees it through its bounded polls."""
    waiter_store, holder_store = open_face(table_url), MySQLStore.from_url(table_url)
    try:
        claim = holder_store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        results: list[Any] = []
        waiter = threading.Thread(
            target=lambda: results.append(waiter_store.wait(ident(), timeout=BOUND))
        )
        waiter.start()
        eventually(lambda: bool(concrete(waiter_store)._wakeups._waiting), "the waiter waits")
        holder_store.complete(ident(), claim.token, b"done", retention=RETENTION)
        waiter.join(timeout=BOUND)
    finally:
        holder_store.close()
    assert results[0].outcome == b"done"


def test_closed_store_refuses_work(open_face: OpenStore, table_url: str) -> None:
    """After close, a call raises StoreError instead of opening connections again."""
    store = open_face(table_url)
    store.get(ident())
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(ident())


def test_a_forked_child_never_uses_the_parents_connections(table_url: str, mysql_url: str) -> None:
    """A child forked after the store was used opens its own connections; the parent's stay
    open and usable."""
    store = MySQLStore.from_url(table_url)
    try:
        claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        parents = [conn.thread_id() for conn, _ in store._pool._idle]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                record = store.get(ident())
                ids = [conn.thread_id() for conn, _ in store._pool._idle]
                ok = record is not None and not set(ids) & set(parents)
                os.write(write, b"ok" if ok else b"no")
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            assert pipe.read() == b"ok"
        os.waitpid(pid, 0)
        assert store.complete(ident(), claim.token, b"out", retention=RETENTION).state is State.DONE
    finally:
        store.close()


def test_b15_cancelled_calls_give_their_connections_back(
    mysql_url: str, tables: Callable[..., str]
) -> None:
    """Claims cancelled while they wait for a row lock, and waiters cancelled mid-poll, close or
    return their connections: a store of two connections still serves calls afterwards."""
    table = tables()
    url = with_options(mysql_url, table=table, pool_max=2, pool_timeout=5)
    blocker = admin(mysql_url)

    async def main() -> Any:
        store = AsyncMySQLStore.from_url(url)
        try:
            claim = await store.claim(ident("held"), "fp", lease=LEASE, retention=RETENTION)
            with blocker.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(
                    f"SELECT * FROM `{table}` WHERE id = %s FOR UPDATE",  # noqa: S608 - the test's table
                    (ident("held").digest(),),
                )
            for _ in range(3):  # each cancelled while its claim waits for the lock
                with anyio.move_on_after(0.2):
                    await store.claim(ident("held"), "fp", lease=LEASE, retention=RETENTION)
            for _ in range(3):  # each cancelled while it polls a record in flight
                await store.claim(ident("other"), "fp", lease=LEASE, retention=RETENTION)
                with anyio.move_on_after(0.05):
                    await store.wait(ident("other"), timeout=BOUND)
            blocker.rollback()
            done = await store.complete(ident("held"), claim.token, b"out", retention=RETENTION)
            return done.state, len(store._pool._idle)
        finally:
            await store.aclose()

    try:
        state, idle = anyio.run(main)
    finally:
        blocker.close()
    assert state is State.DONE
    assert idle <= 2


def test_b10_a_replay_cache_in_front_of_mysql_answers_from_memory(table_url: str) -> None:
    """`replay_cache=N` on a MySQL URL answers a replay without the store (MySQL announces no
    deletes: the cache's TTL bounds how late another process's delete is seen)."""
    store: Any = open_store(with_options(table_url, replay_cache=10))
    try:
        claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        store.complete(ident(), claim.token, b"out", retention=RETENTION)
        replay = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        assert (replay.acquired, replay.record.outcome, store.hits) == (False, b"out", 1)
        assert store.listening
    finally:
        store.close()


@pytest.mark.parametrize(
    "sql_mode", ["STRICT_ALL_TABLES", "STRICT_ALL_TABLES,SIMULTANEOUS_ASSIGNMENT"]
)
def test_b7_b16_b30_the_claim_decides_alike_under_either_assignment_order(
    mysql_url: str, tables: Callable[..., str], sql_mode: str
) -> None:
    """The record primitives on a connection of the caller's (as transactional mode runs
    them), with MariaDB's assignments left to right or all at once: a fresh claim, a live
    duplicate, a mismatch on an expired lease, a takeover (creation time and recovery point
    kept), a replay of the done record, a new claim after retention."""
    records = MySQLRecords(mysql_table(tables()))
    conn = admin(mysql_url)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = %s", (sql_mode,))
        records.create_schema(conn)

        def claim(fingerprint: str, now: float) -> tuple[bool, bool, float, str | None, str]:
            got = records.claim(conn, ident(), fingerprint, now=now, lease=10, retention=100)
            record = got.record
            return (
                got.acquired,
                got.taken_over,
                record.created_at,
                record.recovery_point,
                record.state,
            )

        first = records.claim(conn, ident(), "fp", now=100.0, lease=10, retention=100)
        records.checkpoint(conn, ident(), first.token, "charged", now=100.0)
        assert claim("fp", 105.0) == (False, False, 100.0, "charged", State.IN_FLIGHT)
        assert claim("other", 111.0) == (False, False, 100.0, "charged", State.IN_FLIGHT)
        takeover = records.claim(conn, ident(), "fp", now=111.0, lease=10, retention=100)
        assert (takeover.acquired, takeover.taken_over) == (True, True)
        assert (takeover.record.created_at, takeover.record.recovery_point) == (100.0, "charged")
        records.complete(conn, ident(), takeover.token, b"out", now=112.0, retention=5)
        assert claim("fp", 113.0) == (False, False, 100.0, "charged", State.DONE)
        assert claim("other", 118.0) == (True, False, 118.0, None, State.IN_FLIGHT)
    finally:
        conn.close()


_IN_DJANGO = """
import socket, sys
import pymysql
pymysql.install_as_MySQLdb()
from django.conf import settings
settings.configure()
import django.db.backends.mysql.base  # Django's MySQLdb imports: a second copy of pymysql.err
assert pymysql.err.OperationalError is not pymysql.OperationalError
from retrysafe import Identity, StoreUnavailableError
from retrysafe.stores.mysql import MySQLStore
with socket.socket() as closed:
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
store = MySQLStore.from_url(f"mysql://root@127.0.0.1:{port}/test?connect_timeout=2")
try:
    store.get(Identity("n", "s", "k"))
except StoreUnavailableError as error:
    print("unavailable:", error)
"""


def test_b20_an_unreachable_server_is_unavailable_in_a_django_process_too() -> None:
    """Django's MySQL backend (PyMySQL installed as MySQLdb) loads a second copy of
    `pymysql.err`; the store's errors are still told apart by PyMySQL's own classes, so an
    unreachable server is unavailable (503 on the web faces), not a store failure."""
    ran = subprocess.run(
        [sys.executable, "-c", _IN_DJANGO], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("unavailable: MySQL is unavailable"), ran.stdout
