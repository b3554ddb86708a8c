"""The sqlite3 transactional backend takes the write lock before anything reads (B29).

In a deferred transaction (SQLAlchemy's, or the caller's own), a first statement that only
reads starts a read snapshot; if another connection commits before the lock is taken, SQLite
refuses the lock at once ("database is locked", no busy wait). So `prepare` locks first.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from retrysafe.transactions._sqlite import SQLiteRecords


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, timeout=5)
    connection.execute("PRAGMA journal_mode = WAL")
    return connection


def test_b29_prepare_takes_the_write_lock_with_its_first_statement(tmp_path: Path) -> None:
    """With the table there, the first statement `prepare` runs is the locking write, and
    another connection's write then waits for this transaction."""
    path = tmp_path / "app.db"
    with contextlib.closing(_connect(path)) as setup:
        SQLiteRecords(setup).prepare()  # creates the table (autocommit)
    with contextlib.closing(_connect(path)) as ours, contextlib.closing(_connect(path)) as other:
        other.execute("PRAGMA busy_timeout = 0")
        statements: list[str] = []
        ours.set_trace_callback(statements.append)
        ours.execute("BEGIN")  # deferred, as SQLAlchemy's
        SQLiteRecords(ours).prepare()
        assert statements[1].startswith('UPDATE "retrysafe_records"'), statements
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        ours.execute("ROLLBACK")


def test_b29_prepare_creates_a_missing_table_and_holds_the_lock(tmp_path: Path) -> None:
    """On a new file, `prepare` creates the table inside the caller's transaction."""
    path = tmp_path / "app.db"
    with contextlib.closing(_connect(path)) as ours, contextlib.closing(_connect(path)) as other:
        other.execute("PRAGMA busy_timeout = 0")
        ours.execute("BEGIN")
        SQLiteRecords(ours).prepare()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        ours.execute("COMMIT")
        tables = other.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert ("retrysafe_records",) in tables
