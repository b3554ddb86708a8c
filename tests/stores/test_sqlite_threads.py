"""The SQLite store's connections: one per thread, all closed with the store, none leaked."""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from retrysafe import Identity, ManualClock, StoreError
from retrysafe.stores.sqlite import AsyncSQLiteStore, SQLiteStore

LEASE = 30.0
RETENTION = 3600.0
THREADS = 6


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


@contextlib.contextmanager
def write_lock_held(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock from another connection until it is rolled back."""
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        yield blocker
    finally:
        blocker.close()


def wal_exists(db_path: Path) -> bool:
    """Whether the WAL file is there: SQLite removes it when the last connection closes."""
    return Path(f"{db_path}-wal").exists()


def resource_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The ResourceWarnings (an unclosed sqlite3 connection, on Python 3.13+) among `caught`."""
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def open_connections(store: SQLiteStore | AsyncSQLiteStore) -> list[sqlite3.Connection]:
    """The connections the store has opened and not closed (white box)."""
    return [slot.connection for slot in list(store._connections._slots.values())]


def wait_until(condition: Callable[[], bool]) -> None:
    """Return once `condition()` holds; fail after 10 seconds."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def use_in_thread(store: SQLiteStore, identity: Identity) -> sqlite3.Connection:
    """Claim `identity` in a new thread, which then ends; return the connection it used."""
    used: list[sqlite3.Connection] = []

    def claim() -> None:
        store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
        used.append(store._connection())

    thread = threading.Thread(target=claim)
    thread.start()
    thread.join()
    return used[0]


def is_closed(connection: sqlite3.Connection) -> bool:
    """Whether `connection` has been closed."""
    try:
        connection.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def test_closed_store_refuses_work(store: SQLiteStore) -> None:
    """After close, every primitive raises StoreError."""
    store.get(ident())
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(ident())


def test_close_closes_every_threads_connection(store: SQLiteStore, db_path: Path) -> None:
    """close() closes the connections of all threads: SQLite then folds the WAL file away."""
    store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    threads = [threading.Thread(target=store.get, args=(ident(f"k{n}"),)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Path(f"{db_path}-wal").exists()
    store.close()
    assert not Path(f"{db_path}-wal").exists()


def test_aclose_closes_every_connection_of_the_async_store(db_path: Path) -> None:
    """The writer thread's connection and those of the worker threads that ran reads: aclose
    closes every one, none is left for the garbage collector."""

    async def use_every_connection() -> list[sqlite3.Connection]:
        store = AsyncSQLiteStore(db_path, clock=ManualClock())
        claim = await store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        await store.complete(ident(), claim.token, b"x", retention=RETENTION)
        assert await store.get(ident()) is not None  # read in a worker thread
        async with anyio.create_task_group() as group:  # read in worker threads
            for _ in range(THREADS):
                group.start_soon(store.stats)
        writer = store._runner._writer._thread
        assert writer is not None
        assert writer.connection is not None
        opened = [writer.connection, *open_connections(store)]
        await store.aclose()
        writer.join(10)
        assert not writer.is_alive()
        return opened

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opened = anyio.run(use_every_connection)
        gc.collect()
    assert len(opened) >= 3
    assert all(is_closed(connection) for connection in opened)
    # Not `wal_exists`: the writer thread and this one close their connections at the same
    # time, and SQLite removes the WAL only if a closing connection sees itself the last one.
    assert resource_warnings(caught) == []


def test_unclosed_store_closes_its_connections_when_collected(db_path: Path) -> None:
    """A store dropped without close closes every thread's connection when it is collected."""
    store = SQLiteStore(db_path, clock=ManualClock())
    store.get(ident())
    opened = [store._connection(), *(use_in_thread(store, ident(f"k{n}")) for n in range(3))]
    assert len(set(opened)) == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del store
        gc.collect()
    assert all(is_closed(connection) for connection in opened)
    assert not wal_exists(db_path)
    assert resource_warnings(caught) == []


def test_close_during_another_threads_call_lets_that_call_finish(
    store: SQLiteStore, db_path: Path
) -> None:
    """close() while another thread's claim waits on the database neither breaks that claim
    nor closes its connection under it: the claim completes, then its connection closes."""
    store.create_schema()
    claims = []
    with write_lock_held(db_path) as blocker:
        claimer = threading.Thread(
            target=lambda: claims.append(
                store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
            )
        )
        claimer.start()
        wait_until(lambda: any(s.users for s in list(store._connections._slots.values())))
        time.sleep(0.1)  # let it reach the busy wait inside SQLite
        store.close()
        blocker.execute("ROLLBACK")
        claimer.join()
    assert [claim.acquired for claim in claims] == [True]
    assert not wal_exists(db_path)
    with pytest.raises(StoreError, match="closed"):
        store.get(ident())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_child_opens_its_own_connection(store: SQLiteStore) -> None:
    """A child forked after the store was used never touches the parent's connection."""
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    parent_connection = store._connection()  # white box: which connection a call would use
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        verdict = b"error"
        try:
            own = store._connection() is not parent_connection
            record = store.get(ident())
            child = store.claim(ident("child"), "fp", lease=LEASE, retention=RETENTION)
            seen = record is not None and record.token == claim.token
            store.close()
            verdict = b"ok" if own and seen and child.acquired else b"wrong"
        finally:
            os.write(write, verdict)
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        verdict = pipe.read()
    os.waitpid(pid, 0)
    assert verdict == b"ok"
    assert store._connection() is parent_connection
    assert store.get(ident("child")) is not None
