"""The public surface of `retrysafe.transactions`: sorted exports, drivers loaded lazily."""

from __future__ import annotations

import importlib
import inspect
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

MODULES = [
    "retrysafe.transactions",
    "retrysafe.transactions.phases",
    "retrysafe.transactions.writes",
    "retrysafe.transactions.asgi",
    "retrysafe.transactions.fastapi",
    "retrysafe.transactions.flask",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_complete_and_importable(name: str) -> None:
    """Each module's `__all__` is sorted, names only what exists, and misses nothing public."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for member in exported:
        assert hasattr(module, member), member
    defined_here = {
        member
        for member, value in vars(module).items()
        if not member.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    assert defined_here <= set(exported)


def test_importing_does_not_load_optional_drivers() -> None:
    """`import retrysafe.transactions` loads neither psycopg nor SQLAlchemy."""
    code = (
        "import sys, retrysafe.transactions\n"
        "loaded = [m for m in ('psycopg', 'sqlalchemy', 'fastapi', 'flask') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_the_sqlite3_faces_load_no_other_driver(tmp_path: Path) -> None:
    """A transaction, atomic phases and a write helper on sqlite3 load neither psycopg nor
    SQLAlchemy: which driver a connection belongs to is asked without importing any."""
    code = (
        "import sqlite3, sys\n"
        "from retrysafe import Identity, transactions\n"
        "from retrysafe.transactions import insert_if_absent, run_phases\n"
        f"conn = sqlite3.connect({str(tmp_path / 'app.db')!r})\n"
        "conn.execute('CREATE TABLE t (k TEXT PRIMARY KEY)')\n"
        "conn.commit()\n"
        "with transactions.sqlite(conn, identity=Identity('n', 's', 'k'), fingerprint='f') as tx:\n"
        "    insert_if_absent(conn, 't', {'k': 'a'}, unique=['k'])\n"
        "    tx.complete(b'ok')\n"
        "run_phases(conn, {'one': lambda step: b'done'}, identity=Identity('n', 's', 'p'),\n"
        "           fingerprint='f')\n"
        "loaded = [m for m in ('psycopg', 'sqlalchemy') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_driver_probes_tell_connections_apart(tmp_path: Path) -> None:
    """The probes recognise a sqlite3 connection, and refuse other objects, by colour."""
    from retrysafe.transactions import _drivers

    conn = sqlite3.connect(tmp_path / "probe.db")
    try:
        assert _drivers.is_sqlite_connection(conn)
        assert _drivers.is_sync_connection(conn)
        assert _drivers.is_connection(conn)
        assert not _drivers.is_async_connection(conn)
        assert not _drivers.is_psycopg_connection(conn)
        assert not _drivers.is_session(conn)
    finally:
        conn.close()
    for other in (object(), "sqlite3.Connection", None):
        assert not _drivers.is_connection(other)
