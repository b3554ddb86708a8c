"""The SQLite store beyond the shared contract: processes, threads, files, URLs, schema, purge."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

from retrysafe import (
    ConfigurationError,
    Identity,
    ManualClock,
    State,
    StoreError,
    StoreUnavailableError,
    open_async_store,
    open_store,
)
from retrysafe.stores.sqlite import AsyncSQLiteStore, SQLiteStore

LEASE = 30.0
RETENTION = 3600.0
ROOT = Path(__file__).resolve().parents[2]


def ident(key: str = "key-1") -> Identity:
    """An identity in the test namespace."""
    return Identity("test", "tenant-a", key)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a database file that does not exist yet."""
    return tmp_path / "store.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteStore]:
    """A sync SQLite store on a fresh file and a manual clock."""
    store = SQLiteStore(db_path, clock=ManualClock())
    yield store
    store.close()


def schema_version(path: Path) -> int:
    """Return the database's schema cookie, which every schema change increments."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        version: int = connection.execute("PRAGMA schema_version").fetchone()[0]
        return version


# A contender process: opens the store (racing the others to create the file, switch it to WAL
# and create the schema), waits for "go" on stdin, claims every key, prints which it acquired.
CONTENDER = textwrap.dedent(
    """
    import json, sys
    from retrysafe import Identity, open_store

    url, keys = sys.argv[1], sys.argv[2:]
    print("ready", flush=True)
    sys.stdin.readline()
    store = open_store(url)
    won = [store.claim(Identity("test", "t", k), "fp", lease=60, retention=60).acquired
           for k in keys]
    store.close()
    print(json.dumps(won), flush=True)
    """
)


def test_b7_one_winner_among_4_processes(db_path: Path) -> None:
    """Four OS processes racing for the same keys on one fresh file: one winner per key."""
    keys = [f"race-{n}" for n in range(5)]
    url = f"sqlite:///{db_path}?timeout=30"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, url, *keys],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [json.loads(process.communicate(timeout=60)[0]) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert [p.returncode for p in processes] == [0, 0, 0, 0]
    for index, key in enumerate(keys):
        assert [won[index] for won in results].count(True) == 1, key


def test_b7_one_winner_among_50_threads(store: SQLiteStore) -> None:
    """Fifty threads sharing one store, each on its own connection: exactly one acquires."""
    barrier = threading.Barrier(50)

    def contend(_: int) -> bool:
        barrier.wait()
        return store.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(contend, range(50)))
    assert results.count(True) == 1


def test_b7_one_winner_among_50_tasks(db_path: Path) -> None:
    """Fifty tasks on the async face, run in worker threads: exactly one acquires."""

    async def race() -> list[bool]:
        store = AsyncSQLiteStore(db_path, clock=ManualClock())
        results: list[bool] = []

        async def contend() -> None:
            claim = await store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
            results.append(claim.acquired)

        try:
            async with anyio.create_task_group() as group:
                for _ in range(50):
                    group.start_soon(contend)
        finally:
            await store.aclose()
        return results

    assert anyio.run(race).count(True) == 1


@pytest.mark.parametrize("where", ["missing-dir/store.db", "a-file/store.db"])
def test_b20_unopenable_file_is_unavailable(tmp_path: Path, where: str) -> None:
    """A file in a missing directory, or under a file, is unavailable at first use, at once."""
    (tmp_path / "a-file").write_text("not a directory")
    store = SQLiteStore(tmp_path / where, timeout=60)  # no I/O in the constructor
    with pytest.raises(StoreUnavailableError, match="is not a directory that exists"):
        store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.close()


def test_b20_unopenable_file_is_unavailable_async(tmp_path: Path) -> None:
    """The async face reports an unopenable file the same way."""

    async def use() -> None:
        store = AsyncSQLiteStore(tmp_path / "missing" / "store.db")
        try:
            await store.get(ident())
        finally:
            await store.aclose()

    with pytest.raises(StoreUnavailableError):
        anyio.run(use)


def test_b20_locked_database_is_unavailable(store: SQLiteStore, db_path: Path) -> None:
    """A writer lock held past the busy timeout gives StoreUnavailableError, then clears."""
    store.create_schema()
    impatient = SQLiteStore(db_path, clock=store.clock, timeout=0.05)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailableError, match="locked past the busy timeout"):
            impatient.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        blocker.execute("ROLLBACK")
        assert impatient.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired
    finally:
        blocker.close()
        impatient.close()


def test_other_sqlite_errors_are_store_errors(store: SQLiteStore, db_path: Path) -> None:
    """A sqlite3 failure that is not about reaching the file surfaces as StoreError, never raw."""
    store.create_schema()
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        connection.execute("DROP TABLE retrysafe_records")
    with pytest.raises(StoreError, match="no such table") as caught:
        store.get(ident())
    assert not isinstance(caught.value, StoreUnavailableError)
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_database_is_in_wal_mode(store: SQLiteStore, db_path: Path) -> None:
    """The store switches the file to WAL, so readers never wait for the writer."""
    store.get(ident())
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///relative/path.db", os.path.abspath("relative/path.db")),
        ("sqlite:////absolute/path.db", "/absolute/path.db"),
        ("sqlite:///with%20space.db", os.path.abspath("with space.db")),
    ],
)
def test_url_paths(url: str, expected: str) -> None:
    """Three slashes name a relative path, four an absolute one (the SQLAlchemy convention)."""
    store = SQLiteStore.from_url(url)
    assert store.path == expected
    assert store.table.name == "retrysafe_records"
    assert store.timeout == 5.0
    assert store.synchronous == "full"
    store.close()


def test_url_options(db_path: Path) -> None:
    """The timeout, table and synchronous options reach the store."""
    url = f"sqlite:///{db_path}?timeout=2.5&table=my_records&synchronous=NORMAL"
    store = SQLiteStore.from_url(url, clock=ManualClock())
    assert (store.timeout, store.table.name, store.synchronous) == (2.5, "my_records", "normal")
    store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        assert connection.execute("SELECT count(*) FROM my_records").fetchone() == (1,)
    store.close()


def test_open_store_builds_both_faces(db_path: Path) -> None:
    """open_store and open_async_store build the SQLite store from its URL."""
    url = f"sqlite:///{db_path}"
    sync_store = open_store(url)
    assert isinstance(sync_store, SQLiteStore)
    sync_store.close()
    async_store = open_async_store(url)
    assert isinstance(async_store, AsyncSQLiteStore)
    anyio.run(async_store.aclose)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///x.db?color=blue", "Unknown store URL option 'color'"),
        ("sqlite:///x.db?timeout=soon", "timeout='soon' is not a valid float"),
        ("sqlite:///x.db?timeout=-1", "busy timeout must be a finite number of seconds >= 0"),
        ("sqlite:///x.db?timeout=inf", "busy timeout must be a finite number"),
        ("sqlite:///x.db?table=bad-name", "table name 'bad-name' is not allowed"),
        ("sqlite:///x.db?table=x%22%3B%20DROP", "is not allowed"),
        ("sqlite:///x.db?table=sqlite_master", "is not allowed"),
        ("sqlite:///x.db?synchronous=off", "synchronous='off' must be 'full' or 'normal'"),
        ("sqlite://host/x.db", "has no host ('host')"),
        ("sqlite://", "names none"),
        ("sqlite:///", "names none"),
        ("sqlite:///:memory:", "use 'memory://'"),
        ("sqlite:///x.db#frag", "no '#' fragment"),
        ("sqlite3:///x.db", "is 'sqlite:///relative/path.db' or"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, message: str) -> None:
    """A malformed URL or option is refused with a message that names the problem."""
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        SQLiteStore.from_url(url)


# Schema


def test_schema_is_created_on_first_use_and_once(db_path: Path) -> None:
    """The first primitive creates the table and indexes; later uses and stores change nothing."""
    store = SQLiteStore(db_path, clock=ManualClock())
    store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"retrysafe_records", "retrysafe_records_expires_at"} <= names
    assert {"retrysafe_records_created_at", "retrysafe_records_scope"} <= names
    version = schema_version(db_path)
    other = SQLiteStore(db_path, clock=store.clock)
    assert other.get(ident()) is not None
    store.claim(ident("k2"), "fp", lease=LEASE, retention=RETENTION)
    assert schema_version(db_path) == version
    store.close()
    other.close()


def test_create_schema_is_idempotent(store: SQLiteStore, db_path: Path) -> None:
    """create_schema can run any number of times and keeps the records."""
    store.create_schema()
    version = schema_version(db_path)
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.create_schema()
    store.create_schema()
    assert schema_version(db_path) == version
    assert store.get(ident()) == claim.record


def test_create_schema_async(db_path: Path) -> None:
    """The async face's create_schema creates the table."""

    async def create() -> None:
        store = AsyncSQLiteStore(db_path, table="async_records")
        await store.create_schema()
        await store.aclose()

    anyio.run(create)
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        assert connection.execute("SELECT count(*) FROM async_records").fetchone() == (0,)


def test_tables_in_one_file_are_independent(db_path: Path) -> None:
    """Two stores on one file with different tables never see each other's records."""
    clock = ManualClock()
    first = SQLiteStore(db_path, clock=clock, table="first")
    second = SQLiteStore(db_path, clock=clock, table="second")
    assert first.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired
    assert second.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired
    assert first.delete(ident())
    assert second.get(ident()) is not None
    first.close()
    second.close()


# Storage details


def test_b34_any_string_round_trips(store: SQLiteStore) -> None:
    """Fingerprints and recovery points with NUL, non-ASCII and lone surrogates round-trip."""
    odd = "nul\x00 · ключ · \udcff"
    identity = Identity(odd, odd, odd)
    claim = store.claim(identity, odd, lease=LEASE, retention=RETENTION)
    store.checkpoint(identity, claim.token, odd)
    record = store.get(identity)
    assert record is not None
    assert (record.identity, record.fingerprint, record.recovery_point) == (identity, odd, odd)


def test_b21_purge_deletes_in_bounded_batches(store: SQLiteStore) -> None:
    """Purging 250 expired records with limit=100 takes three calls and keeps the live ones."""
    clock = store.clock
    assert isinstance(clock, ManualClock)
    for index in range(250):
        claim = store.claim(ident(f"old-{index}"), "fp", lease=LEASE, retention=RETENTION)
        store.complete(ident(f"old-{index}"), claim.token, b"x", retention=10)
    clock.advance(11)
    store.claim(ident("live"), "fp", lease=LEASE, retention=RETENTION)
    assert [store.purge_expired(limit=100) for _ in range(4)] == [100, 100, 50, 0]
    assert [r.identity.key for r in store.list_records()] == ["live"]


def test_b21_expired_rows_stay_invisible_until_purged(store: SQLiteStore) -> None:
    """An expired row still on disk is absent from get, list_records and stats."""
    clock = store.clock
    assert isinstance(clock, ManualClock)
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.complete(ident(), claim.token, b"x" * 10, retention=5)
    clock.advance(5)
    assert store.get(ident()) is None
    assert store.list_records(state=State.DONE) == []
    assert store.stats().done == 0
    assert store.delete(ident()) is False  # an expired record does not exist
    assert store.purge_expired() == 0  # delete removed the row all the same
