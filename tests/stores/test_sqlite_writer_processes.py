"""The async SQLite store against other connections and processes: locks, fork, lifetime."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref
from pathlib import Path

import anyio
import pytest

from retrysafe import Claim, ManualClock, State, StoreUnavailableError
from retrysafe.stores._sql.sqlite_threads import _INHERITED
from retrysafe.stores.sqlite import AsyncSQLiteStore, SQLiteStore
from tests.stores.test_sqlite_writer import (
    LEASE,
    RETENTION,
    ident,
    rows,
    wait_until,
    write_lock_held,
    writer_taken_one,
    writer_thread,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a database file that does not exist yet."""
    return tmp_path / "store.db"


def test_b20_a_locked_database_fails_the_write_not_the_loop(db_path: Path) -> None:
    """While another connection holds the write lock past the busy timeout, a claim gets
    StoreUnavailableError (the loop runs meanwhile), and the writer thread carries on once the
    lock is free."""

    async def scenario() -> None:
        store = AsyncSQLiteStore(db_path, clock=ManualClock(), timeout=0.2)
        done = await store.claim(ident("done"), "fp", lease=LEASE, retention=RETENTION)
        await store.complete(ident("done"), done.token, b"kept", retention=RETENTION)
        errors: list[BaseException] = []

        async def claim() -> None:
            try:
                await store.claim(ident("new"), "fp", lease=LEASE, retention=RETENTION)
            except StoreUnavailableError as error:
                errors.append(error)

        with write_lock_held(db_path):
            async with anyio.create_task_group() as group:
                group.start_soon(claim)
                await writer_taken_one(store)
        assert len(errors) == 1
        assert "locked past the busy timeout" in str(errors[0])
        replay = await store.claim(ident("done"), "fp", lease=LEASE, retention=RETENTION)
        assert (replay.acquired, replay.record.outcome) == (False, b"kept")
        assert (await store.claim(ident("new"), "fp", lease=LEASE, retention=RETENTION)).acquired
        await store.aclose()

    anyio.run(scenario)


def test_a_read_that_waits_does_not_hold_the_loop(db_path: Path) -> None:
    """A get while another connection holds the file exclusively (readers too) does not wait
    in the event loop: it waits in a worker thread while the loop runs, here to free the file."""
    setup = SQLiteStore(db_path, clock=ManualClock())
    claim = setup.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    setup.close()

    async def scenario() -> None:
        store = AsyncSQLiteStore(db_path, clock=setup.clock, timeout=30)
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("PRAGMA locking_mode = EXCLUSIVE")
        blocker.execute("BEGIN EXCLUSIVE")
        got: list[object] = []

        async def get() -> None:
            got.append(await store.get(ident()))

        async with anyio.create_task_group() as group:
            group.start_soon(get)
            await anyio.wait_all_tasks_blocked()
            assert got == []  # it waits in a worker thread, and the loop runs this
            blocker.close()
        assert got == [claim.record]
        assert len(store._connections._slots) == 1  # the worker thread's connection
        await store.aclose()

    anyio.run(scenario)


def test_b20_an_unopenable_file_fails_each_write_and_the_writer_stays(tmp_path: Path) -> None:
    """A database the writer thread cannot open gives every write StoreUnavailableError (no
    hang); once the directory exists, the same writer thread opens it and writes."""
    path = tmp_path / "later" / "store.db"

    async def scenario() -> None:
        store = AsyncSQLiteStore(path, clock=ManualClock())
        with pytest.raises(StoreUnavailableError, match="is not a directory that exists"):
            await store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        thread = writer_thread(store)
        path.parent.mkdir()
        assert (await store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)).acquired
        assert writer_thread(store) is thread
        await store.aclose()

    anyio.run(scenario)


def test_b7_a_second_process_writing_the_same_file(db_path: Path) -> None:
    """A process claiming keys through the sync store while tasks claim the same keys through
    the async store's writer thread: one winner per key across both."""
    keys = [f"race-{n}" for n in range(40)]
    contender = textwrap.dedent(
        """
        import json, sys
        from retrysafe import Identity, open_store

        url, keys = sys.argv[1], sys.argv[2:]
        store = open_store(url)
        store.create_schema()
        print("ready", flush=True)
        sys.stdin.readline()
        won = [store.claim(Identity("test", "tenant-a", k), "fp", lease=60, retention=60)
               .acquired for k in keys]
        store.close()
        print(json.dumps(won), flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(
        [sys.executable, "-c", contender, f"sqlite:///{db_path}?timeout=30", *keys],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )

    async def race() -> list[bool]:
        store = AsyncSQLiteStore(db_path, timeout=30)
        won = [False] * len(keys)

        async def claim(index: int) -> None:
            claim = await store.claim(ident(keys[index]), "fp", lease=60, retention=60)
            won[index] = claim.acquired

        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        async with anyio.create_task_group() as group:
            for index in range(len(keys)):
                group.start_soon(claim, index)
        await store.aclose()
        return won

    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        ours = anyio.run(race)
        theirs = json.loads(process.communicate(timeout=60)[0])
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    assert [a + b for a, b in zip(ours, theirs, strict=True)] == [1] * len(keys)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_child_starts_its_own_writer(db_path: Path) -> None:
    """A child forked after the async store wrote starts its own writer thread and connection,
    never the parent's; the parent's writer goes on after."""
    store = AsyncSQLiteStore(db_path, clock=ManualClock())

    async def first() -> Claim:
        return await store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)

    claim = anyio.run(first)
    parent_thread = writer_thread(store)
    parent_connection = parent_thread.connection
    assert parent_connection is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        verdict = b"error"
        try:

            async def child() -> bool:
                record = await store.get(ident())
                mine = await store.claim(ident("child"), "fp", lease=LEASE, retention=RETENTION)
                thread = writer_thread(store)
                own = thread is not parent_thread and thread.connection is not parent_connection
                kept = any(c is parent_connection for c in _INHERITED)
                seen = record is not None and record.token == claim.token
                await store.aclose()
                return own and kept and seen and mine.acquired

            verdict = b"ok" if anyio.run(child) else b"wrong"
        finally:
            os.write(write, verdict)
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        verdict = pipe.read()
    os.waitpid(pid, 0)
    assert verdict == b"ok"

    async def parent() -> None:
        assert (await store.get(ident("child"))) is not None
        assert (await store.claim(ident("after"), "fp", lease=LEASE, retention=RETENTION)).acquired
        assert writer_thread(store) is parent_thread
        await store.aclose()

    anyio.run(parent)


def test_an_unreachable_store_stops_its_writer_and_closes_its_connections(db_path: Path) -> None:
    """A store dropped without aclose is collected; its writer thread ends and every connection
    it opened is closed (a connection opened and closed after it is the last, so SQLite removes
    the WAL file), with no ResourceWarning."""

    async def use() -> tuple[weakref.ref[AsyncSQLiteStore], threading.Thread]:
        store = AsyncSQLiteStore(db_path, clock=ManualClock())
        claim = await store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        await store.complete(ident(), claim.token, b"x", retention=RETENTION)
        await store.get(ident())  # read in worker threads
        await store.stats()
        return weakref.ref(store), writer_thread(store)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        collected, thread = anyio.run(use)
        # anyio's worker thread holds its last call (and so the store) until it exits.
        wait_until(lambda: gc.collect() >= 0 and collected() is None)
        thread.join(10)
        gc.collect()
    assert not thread.is_alive()
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        connection.execute("PRAGMA schema_version")  # opens the WAL; closing last removes it
    assert not Path(f"{db_path}-wal").exists()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_an_unclosed_store_does_not_hold_the_interpreter_at_exit(db_path: Path) -> None:
    """A process that used the async store and exits without aclose exits at once."""
    script = textwrap.dedent(
        """
        import sys, anyio
        from retrysafe import Identity
        from retrysafe.stores.sqlite import AsyncSQLiteStore

        store = AsyncSQLiteStore(sys.argv[1])

        async def main():
            claim = await store.claim(Identity("t", "s", "k"), "fp", lease=60, retention=60)
            print(claim.acquired, flush=True)

        anyio.run(main)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(db_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "True", "")
    assert rows(db_path) == {"k": State.IN_FLIGHT.value}
