"""The SQLite store's group commit without savepoints: each write atomic, its error its own.

A write that changes at most one statement's worth (every primitive but `create_schema`) runs
in the shared transaction without a savepoint: SQLite undoes a failed statement by itself and
keeps the transaction's earlier statements, and where it cannot (an I/O error, an interrupt)
it rolls back the whole transaction, and then every write of the group must fail. These tests
provoke each kind of error with real SQLite, in a group formed on the real writer thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from retrysafe import ManualClock, State, StoreError
from retrysafe.stores.sqlite import AsyncSQLiteStore
from tests.stores.test_sqlite_writer import (
    LEASE,
    RETENTION,
    ident,
    queued,
    rows,
    write_lock_held,
    writer_taken_one,
)

ROOT = Path(__file__).resolve().parents[2]
TABLE = "retrysafe_records"
Operation = Callable[[sqlite3.Connection, float], Any]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a database file that does not exist yet."""
    return tmp_path / "store.db"


def in_one_group(
    db_path: Path, writes: dict[str, Operation]
) -> tuple[dict[str, object], list[str]]:
    """Claim `before1` and `before2`, then run a claim of `a`, `writes` (as single-statement
    writes, in order) and a claim of `b` in one group on the writer thread; return each one's
    result or error, and the statements the writer ran for the group."""
    statements: list[str] = []

    async def scenario() -> dict[str, object]:
        store = AsyncSQLiteStore(db_path, clock=ManualClock(), timeout=30)
        runner = store._runner
        for key in ("before1", "before2"):
            await store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)
        results: dict[str, object] = {}

        async def record(name: str, call: Callable[[], Any]) -> None:
            try:
                results[name] = await call()
            except Exception as error:
                results[name] = error

        def trace(connection: sqlite3.Connection, now: float) -> None:
            connection.set_trace_callback(statements.append)

        def claim(key: str) -> Callable[[], Any]:
            return lambda: store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)

        def write(operation: Operation) -> Callable[[], Any]:
            return lambda: runner.write(operation, one_statement=True)

        calls = {
            "trace": write(trace),
            "a": claim("a"),
            **{name: write(operation) for name, operation in writes.items()},
            "b": claim("b"),
        }
        with write_lock_held(db_path) as blocker:
            async with anyio.create_task_group() as group:
                group.start_soon(record, "first", lambda: store.delete(ident("absent")))
                await writer_taken_one(store)
                for name, call in calls.items():
                    group.start_soon(record, name, call)
                await anyio.wait_all_tasks_blocked()
                assert queued(store) == len(calls)  # all behind the first: one group
                blocker.execute("ROLLBACK")
        await runner.write(lambda connection, now: connection.set_trace_callback(None))
        await store.aclose()
        return results

    return anyio.run(scenario), statements


def update_all(state_of_before2: str) -> Operation:
    """A statement that changes every row (before1 first), and fails at before2 if asked to."""
    sql = (
        f"UPDATE {TABLE} SET state = CASE WHEN key = x'{b'before2'.hex()}'"  # noqa: S608
        " THEN ? ELSE 'done' END"
    )
    return lambda connection, now: connection.execute(sql, (state_of_before2,))


def fill_past_max_page_count(connection: sqlite3.Connection, now: float) -> None:
    """A statement that writes 1 MB into every row, in a file capped a few pages larger."""
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages + 4}")
    try:
        connection.execute(f"UPDATE {TABLE} SET outcome = zeroblob(1000000)")  # noqa: S608
    finally:
        connection.execute("PRAGMA max_page_count = 1073741823")


def copy_of_before1(connection: sqlite3.Connection, now: float) -> None:
    """A statement that inserts a second row with before1's primary key."""
    connection.execute(
        f"INSERT INTO {TABLE} SELECT * FROM {TABLE} WHERE key = x'{b'before1'.hex()}'"  # noqa: S608
    )


@pytest.mark.parametrize(
    ("failing", "code"),
    [
        (update_all("not-a-state"), sqlite3.SQLITE_CONSTRAINT),  # CHECK, at the second row
        (copy_of_before1, sqlite3.SQLITE_CONSTRAINT),  # PRIMARY KEY
        (fill_past_max_page_count, sqlite3.SQLITE_FULL),
    ],
    ids=["check-after-a-changed-row", "primary-key", "full"],
)
def test_b17_a_failed_statement_is_undone_alone_and_the_group_commits(
    db_path: Path, failing: Operation, code: int
) -> None:
    """A failed statement is undone alone, with no savepoint, and the rest of the group commits."""
    results, statements = in_one_group(db_path, {"failing": failing, "after": update_all("done")})
    error = results["failing"]
    assert isinstance(error, StoreError)
    assert isinstance(error.__cause__, sqlite3.Error)
    assert error.__cause__.sqlite_errorcode & 0xFF == code
    assert getattr(results["a"], "acquired", False)
    assert getattr(results["b"], "acquired", False)
    assert rows(db_path) == {  # "after" marked every row done, "b" then claimed
        "before1": State.DONE.value,
        "before2": State.DONE.value,
        "a": State.DONE.value,
        "b": State.IN_FLIGHT.value,
    }
    assert not [sql for sql in statements if "SAVEPOINT" in sql.upper()]
    assert sum(sql == "COMMIT" for sql in statements) == 1


def interrupt_mid_statement(connection: sqlite3.Connection, now: float) -> None:
    """An update interrupted while it runs: SQLite rolls back the whole transaction."""

    def interrupt() -> int:
        connection.interrupt()
        return 1

    connection.create_function("test_interrupt", 0, interrupt)
    connection.execute(f"UPDATE {TABLE} SET outcome = test_interrupt()")  # noqa: S608


def insert_or_rollback(connection: sqlite3.Connection, now: float) -> None:
    """A conflict whose resolution is ROLLBACK: SQLite rolls back the whole transaction."""
    connection.execute(
        f"INSERT OR ROLLBACK INTO {TABLE} SELECT * FROM {TABLE}"  # noqa: S608
        f" WHERE key = x'{b'before1'.hex()}'"
    )


def change_then_fail(connection: sqlite3.Connection, now: float) -> None:
    """A write that fails after its statement changed a row: no one can undo that alone."""
    connection.execute(f"UPDATE {TABLE} SET outcome = x'01'")  # noqa: S608
    raise RuntimeError("failed after its change")


@pytest.mark.parametrize(
    "failing",
    [interrupt_mid_statement, insert_or_rollback, change_then_fail],
    ids=["interrupt", "or-rollback", "error-after-the-change"],
)
def test_b17_an_error_that_undoes_the_transaction_fails_every_write_of_the_group(
    db_path: Path, failing: Operation
) -> None:
    """A failure SQLite cannot confine to the statement fails every write and applies none."""
    results, _ = in_one_group(db_path, {"failing": failing})
    for name in ("a", "failing", "b"):
        assert isinstance(results[name], Exception), name
    assert rows(db_path) == {"before1": State.IN_FLIGHT.value, "before2": State.IN_FLIGHT.value}
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        assert connection.execute(f"SELECT COUNT(outcome) FROM {TABLE}").fetchone() == (0,)  # noqa: S608


# Runs in a child process (the file size limit is the process's): form one group on the
# writer thread, cap the size of the files the process may write (a write past it fails with
# EFBIG, which SQLite reports as an I/O error), and commit the group; with `statement`, one
# write of the group spills the page cache to the WAL in the middle of its statement.
_IO_ERROR_CHILD = textwrap.dedent(
    """
    import asyncio, contextlib, json, resource, signal, sqlite3, sys, threading, time
    from retrysafe import Identity, ManualClock
    from retrysafe.stores.sqlite import AsyncSQLiteStore

    path, where = sys.argv[1], sys.argv[2]
    seen = {}

    def big_update(connection, now):
        try:
            connection.execute("UPDATE retrysafe_records SET outcome = zeroblob(2000000)")
        except sqlite3.Error:
            seen["in_transaction"] = connection.in_transaction
            raise

    async def main():
        store = AsyncSQLiteStore(path, clock=ManualClock(), timeout=30)
        runner = store._runner
        ident = lambda key: Identity("test", "tenant-a", key)
        await store.claim(ident("before1"), "fp", lease=30, retention=3600)
        await runner.write(lambda c, now: c.execute("PRAGMA cache_size = 2"))
        with contextlib.closing(sqlite3.connect(path)) as checkpoint:
            checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        began = threading.Event()  # the writer's next group began its transaction
        traced = lambda sql: began.set() if sql.startswith("BEGIN") else None
        await runner.write(lambda c, now: c.set_trace_callback(traced))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(store.delete(ident("absent")))  # waits for the lock
        deadline = time.monotonic() + 10
        # Until the writer has made its group of `first` alone and waits for the lock in
        # BEGIN IMMEDIATE: the claims below make the next group.
        while not began.is_set():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        calls = [store.claim(ident(f"k{n}"), "fp", lease=30, retention=3600) for n in range(4)]
        if where == "statement":
            calls.insert(2, runner.write(big_update, one_statement=True))
        tasks = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4200, resource.RLIM_INFINITY))
        blocker.execute("ROLLBACK")
        await first  # it changed nothing, so its commit wrote nothing
        results = await asyncio.gather(*tasks, return_exceptions=True)
        print(json.dumps({"results": [type(r).__name__ for r in results], **seen}))

    asyncio.run(main())
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("where", ["commit", "statement"])
def test_b17_an_io_error_fails_every_write_of_the_group_and_applies_none(
    db_path: Path, where: str
) -> None:
    """A real I/O error, at COMMIT or mid-statement, fails the whole group and applies none."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", _IO_ERROR_CHILD, str(db_path), where],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["results"] == ["StoreError"] * len(report["results"])
    if where == "statement":
        assert report["in_transaction"] is False  # SQLite rolled back the whole transaction
    assert rows(db_path) == {"before1": State.IN_FLIGHT.value}
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
