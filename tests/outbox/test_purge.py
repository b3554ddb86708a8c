"""The relay's purge of published messages (B21): bounded chunks, each its own short transaction,
a bounded number per purge, and a failed purge that fails nothing else.

Real SQLite files and a real PostgreSQL server. The published backlog is written straight into
the outbox table, as the relay leaves it (published a day before the retention ended); a
trigger makes the database refuse (SQLite) or stall past `read_timeout` (PostgreSQL) a purge.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from retrysafe import Identity, ManualClock, transactions
from retrysafe.outbox import OutboxMessage, Relay, outbox_table
from retrysafe.outbox._relay import _PURGE_CHUNK, _PURGE_CHUNKS
from tests.conftest import unique_name
from tests.outbox.test_outbox import database_of
from tests.outbox.test_parking import commit
from tests.transactions.conftest import Database

KINDS = ["sqlite", "postgres"]
DAY = 86400.0
WAIT = 10.0


def fill_backlog(database: Database, count: int, published_at: float, prefix: str) -> None:
    """Write `count` messages published at `published_at` into the outbox table."""
    table = outbox_table(database.table)
    insert = (
        f'INSERT INTO "{table}" (message_id, topic, payload, headers, created_at, published_at) '
    )
    if database.kind == "postgres":
        database.execute(
            f"{insert} SELECT ? || n, 't', 'x'::bytea, '{{}}'::jsonb, ?, ? "  # noqa: S608
            "FROM generate_series(1, ?) AS n",
            (prefix, published_at, published_at, count),
        )
        return
    rows = ((f"{prefix}{n}", "t", b"x", "{}", published_at, published_at) for n in range(count))
    with contextlib.closing(sqlite3.connect(database.dsn)) as conn, conn:
        conn.executemany(f"{insert} VALUES (?, ?, ?, ?, ?, ?)", rows)


def backlog(database: Database, prefix: str) -> int:
    """How many of the messages `fill_backlog` wrote with `prefix` are left."""
    table = outbox_table(database.table)
    statement = f'SELECT count(*) FROM "{table}" WHERE message_id LIKE ?'  # noqa: S608
    [(count,)] = database.execute(statement, (f"{prefix}%",))
    return int(count)


def write_without_waiting(database: Database) -> str:
    """Commit one operation on a connection that never waits for the write lock; say how it
    went."""
    try:
        with (
            contextlib.closing(sqlite3.connect(database.dsn, timeout=0)) as conn,
            transactions.sqlite(
                conn, identity=Identity("orders", "t", "app"), fingerprint="f", table=database.table
            ) as tx,
        ):
            tx.outbox.add("orders.paid", b"app")
            tx.complete(b"done")
    except Exception as error:  # reported to the test, which asserts there was none
        return f"{type(error).__name__}: {error}"
    return "committed"


def test_b21_a_purge_commits_chunk_by_chunk_so_the_app_writes_in_between(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On SQLite, a purge of more than one chunk releases the write lock after each: an app
    transaction that never waits commits between two chunks, and the backlog is purged."""
    clock = ManualClock()
    sent: list[OutboxMessage] = []
    with database_of("sqlite", request, tmp_path) as database:
        commit(database, "o-1", "orders.paid")
        fill_backlog(database, _PURGE_CHUNK * 2 + 1, clock.now() - 2 * DAY, "old-")
        app: list[str] = []
        deletes = 0

        def between_chunks(statement: str) -> None:
            """Run the app's transaction once the first chunk committed, before the next."""
            nonlocal deletes
            if statement.startswith("DELETE"):
                deletes += 1
            elif statement == "BEGIN IMMEDIATE" and deletes == 1 and not app:
                worker = threading.Thread(
                    target=lambda: app.append(write_without_waiting(database))
                )
                worker.start()
                worker.join(WAIT)

        with contextlib.closing(sqlite3.connect(database.dsn, isolation_level=None)) as conn:
            conn.set_trace_callback(between_chunks)
            with Relay(conn, sent.append, table=database.table, retention=DAY, clock=clock) as r:
                assert r.run_once() == 1
        assert app == ["committed"]
        assert deletes == 3
        assert backlog(database, "old-") == 0


@pytest.mark.parametrize("kind", KINDS)
def test_b21_one_purge_deletes_a_bounded_number_of_chunks_and_the_next_goes_on(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A backlog longer than one purge's chunks is purged over the next batches that are not
    full, published messages younger than the retention kept."""
    clock = ManualClock()
    most = _PURGE_CHUNK * _PURGE_CHUNKS
    with (
        database_of(kind, request, tmp_path) as database,
        Relay(database.url, lambda _: None, retention=DAY, clock=clock) as relay,
    ):
        assert relay.run_once() == 0  # creates the table; nothing to purge
        fill_backlog(database, most + 5, clock.now() - 2 * DAY, "old-")
        fill_backlog(database, 3, clock.now() - 10, "recent-")
        clock.advance(60)
        assert relay.run_once() == 0
        assert backlog(database, "old-") == 5
        assert relay.run_once() == 0
        assert backlog(database, "old-") == 0
        assert backlog(database, "recent-") == 3


def refuse_purges(database: Database) -> None:
    """Make every DELETE on the outbox table fail: refused (SQLite), or stalled past the
    relay's `read_timeout` of 1 s (PostgreSQL)."""
    table = outbox_table(database.table)
    if database.kind == "sqlite":
        database.execute(
            f'CREATE TRIGGER refuse_purge BEFORE DELETE ON "{table}" '
            "BEGIN SELECT RAISE(ABORT, 'purge refused'); END"
        )
        return
    function = unique_name("rs_stall")
    database.execute(
        f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
    )
    database.execute(
        f'CREATE TRIGGER refuse_purge BEFORE DELETE ON "{table}" '
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
    )
    database.execute(f"COMMENT ON TRIGGER refuse_purge ON \"{table}\" IS '{function}'")


def allow_purges(database: Database) -> None:
    """Undo `refuse_purges`."""
    table = outbox_table(database.table)
    if database.kind == "sqlite":
        database.execute("DROP TRIGGER refuse_purge")
        return
    [(function,)] = database.execute(
        "SELECT obj_description(oid, 'pg_trigger') FROM pg_trigger WHERE tgname = 'refuse_purge' "
        "AND tgrelid = to_regclass(?)",
        (f'"{table}"',),
    )
    database.execute(f'DROP TRIGGER refuse_purge ON "{table}"')
    database.execute(f"DROP FUNCTION {function}()")


@pytest.mark.parametrize("kind", KINDS)
def test_b21_a_failed_purge_is_logged_and_the_relay_goes_on(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A purge that fails (refused, or cut by `read_timeout`) fails neither the batch before it
    nor the next ones: they are published and marked; the purge is logged and tried again at
    its next time, not at every batch."""
    clock = ManualClock()
    sent: list[str] = []
    with database_of(kind, request, tmp_path) as database:
        url = database.url if kind == "sqlite" else f"{database.url}&read_timeout=1"
        commit(database, "o-1", "orders.paid")
        fill_backlog(database, 5, clock.now() - 2 * DAY, "old-")
        refuse_purges(database)
        with (
            Relay(url, lambda m: sent.append(m.message_id), retention=DAY, clock=clock) as relay,
            caplog.at_level(logging.WARNING, logger="retrysafe"),
        ):
            assert relay.run_once() == 1  # published and marked, then the purge failed
            commit(database, "o-2", "orders.paid")
            assert relay.run_once() == 1  # no purge tried: its next time has not come
            purges = [r for r in caplog.records if "could not purge" in r.getMessage()]
            assert len(purges) == 1
            table = outbox_table(database.table)
            unpublished = f'SELECT count(*) FROM "{table}" WHERE published_at IS NULL'  # noqa: S608
            assert database.execute(unpublished) == [(0,)]
            allow_purges(database)
            clock.advance(60)
            assert relay.run_once() == 0
        assert backlog(database, "old-") == 0
        assert len(sent) == 2
