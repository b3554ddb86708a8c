"""The relay's schema upgrade of the outbox table on PostgreSQL never holds up the app's writes
(B29): while another session holds the table (an older relay's batch, an app's transaction),
the relay defers the upgrade instead of queueing for its lock, relays with the columns the
table has, and upgrades it on a later batch, once the table is free. A relay starting on a
table that lacks nothing takes no lock on it; a lock not granted within the relay's short
bound leaves no wait behind on the server, even when `read_timeout` is shorter.

A real PostgreSQL server. The holder is a plain psycopg transaction that stands in for the
older relay (`SELECT ... FOR UPDATE`, its batch) or the app (`ROW EXCLUSIVE`, what an insert
takes), held open while the app writes on a third connection. Each app write waits at most
5 s for a lock (`lock_timeout`): a write held up by a queued schema change fails the test
instead of hanging it. The relay's own connection is found by its `application_name`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from psycopg.pq import TransactionStatus

from retrysafe import Identity, transactions
from retrysafe.outbox import OutboxMessage, Relay, outbox_table
from retrysafe.outbox._sql import OutboxTable
from tests.conftest import unique_name
from tests.outbox.test_outbox import database_of
from tests.outbox.test_parking import RefusedError, commit, refusing
from tests.transactions.conftest import Database, make_database

pytestmark = pytest.mark.postgres

WAIT = 15.0  # seconds: the most a test waits for an event
PARKING = ("attempts", "last_error", "parked_at")
HOLDERS = {
    "an older relay's batch": 'SELECT id FROM "{table}" FOR UPDATE',
    "an app transaction": 'LOCK TABLE "{table}" IN ROW EXCLUSIVE MODE',
}


def first_release_table(database: Database) -> str:
    """Create the outbox table as the first release did (no parking columns); return its name."""
    table = outbox_table(database.table)
    database.execute(
        f'CREATE TABLE "{table}" (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, '
        "message_id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL, payload BYTEA NOT NULL, "
        "headers JSONB NOT NULL, created_at FLOAT8 NOT NULL, published_at FLOAT8)"
    )
    database.execute(
        f'CREATE INDEX "{table}_unpublished" ON "{table}" (id) WHERE published_at IS NULL'
    )
    database.execute(
        f'CREATE INDEX "{table}_published" ON "{table}" (published_at) '
        "WHERE published_at IS NOT NULL"
    )
    return table


def app_write(database: Database, key: str) -> None:
    """Commit one operation of `key` with one message, as the app does, waiting at most 5 s
    for any lock (`LockNotAvailable` past it: the write was held up)."""
    with contextlib.closing(database.connect()) as conn:
        conn.execute("SET lock_timeout = '5s'")
        conn.commit()
        identity = Identity("orders", "t", key)
        with transactions.psycopg(
            conn, identity=identity, fingerprint="f", table=database.table
        ) as tx:
            tx.outbox.add("orders.paid", f"{key}-0".encode())
            tx.complete(b"done")


def columns(database: Database, table: str) -> list[str]:
    """The parking columns the table has."""
    rows = database.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(?) "
        "AND attname = ANY(?) AND NOT attisdropped ORDER BY attname",
        (f'"{table}"', list(PARKING)),
    )
    return [row[0] for row in rows]


def waiting(database: Database, relay_name: str) -> bool:
    """Whether the relay's connection (or what the server still runs of it) waits for a lock."""
    rows = database.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = ? "
        "AND wait_event_type = 'Lock'",
        (relay_name,),
    )
    return bool(rows[0][0])


def started(relay: Relay) -> tuple[threading.Thread, list[Any]]:
    """Run one batch of `relay` in a thread; the list gets its result, or its error."""
    outcome: list[Any] = []

    def batch() -> None:
        try:
            outcome.append(relay.run_once())
        except Exception as error:  # kept for the test to see
            outcome.append(error)

    thread = threading.Thread(target=batch, daemon=True)
    thread.start()
    return thread, outcome


def done_or_waiting(thread: threading.Thread, database: Database, relay_name: str) -> None:
    """Return once the relay's batch is over or its connection waits for a lock."""
    deadline = time.monotonic() + WAIT
    while thread.is_alive() and not waiting(database, relay_name):
        assert time.monotonic() < deadline, "the relay neither finished nor waited"
        time.sleep(0.02)


@pytest.mark.parametrize("holder_sql", HOLDERS.values(), ids=HOLDERS.keys())
def test_b29_a_relay_defers_the_upgrade_of_a_held_older_table_and_never_holds_up_writes(
    holder_sql: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A new relay starting while a session holds a first-release table: the app's write on a
    third connection commits while the holder still holds it, the relay waits for no lock,
    says once (WARNING) that it deferred the upgrade, and publishes with the columns the
    table has. Once the holder is gone, the next batch upgrades the table (INFO)."""
    caplog.set_level(logging.INFO, "retrysafe")
    got: list[OutboxMessage] = []
    with database_of("postgres", request, tmp_path) as database:
        table = first_release_table(database)
        commit(database, "a", "orders.paid")  # written by the app, as it was
        relay_name = unique_name("rs_relay")
        url = f"{database.url}&application_name={relay_name}"
        with contextlib.closing(database.connect()) as holder, Relay(url, got.append) as relay:
            holder.execute(holder_sql.format(table=table))  # held open below
            thread, outcome = started(relay)
            try:
                done_or_waiting(thread, database, relay_name)
                app_write(database, "b")  # a write held up by the relay fails, after 5 s
                assert holder.info.transaction_status == TransactionStatus.INTRANS
                assert not waiting(database, relay_name)
            finally:
                holder.rollback()
                thread.join(WAIT)
            # The holder's row lock (an older relay's batch) keeps "a" back; the app's does not.
            published = 0 if "FOR UPDATE" in holder_sql else 1
            assert outcome == [published]
            assert columns(database, table) == []  # deferred, not half done
            [deferred] = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert "deferred" in deferred.getMessage()
            assert table in deferred.getMessage()
            assert relay.run_once() == 2 - published  # the table is free: upgraded, then relayed
            assert columns(database, table) == sorted(PARKING)
            assert any("upgraded" in r.getMessage() for r in caplog.records)
            assert [r.levelno >= logging.WARNING for r in caplog.records].count(True) == 1
        assert [m.payload for m in got] == [b"a-0", b"b-0"]


def test_b29_an_older_table_relays_without_parking_until_it_is_upgraded(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """While the upgrade is deferred, a refused message stops every batch, as in the first
    release (no column to count its failures in, none to park it with); once the table is
    upgraded, it is parked and the message after it goes."""
    got: list[OutboxMessage] = []
    with database_of("postgres", request, tmp_path) as database:
        table = first_release_table(database)
        commit(database, "a", "refused", "orders.paid")
        url = f"{database.url}&read_timeout=2"
        with contextlib.closing(database.connect()) as holder:
            holder.execute(f'LOCK TABLE "{table}" IN ROW EXCLUSIVE MODE')
            with Relay(url, refusing("refused", got), max_attempts=1) as relay:
                for _ in range(2):
                    with pytest.raises(RefusedError):
                        relay.run_once()  # the batch stops at it, every time
                assert relay.parked_messages() == []
                assert relay.requeue() == 0
                holder.rollback()
                assert relay.run_once() == 1  # upgraded: refused once more, parked, "a-1" goes
                [parked] = relay.parked_messages()
                assert (parked.topic, parked.attempts) == ("refused", 1)
        assert [m.payload for m in got] == [b"a-1"]


def test_b29_a_relay_starting_on_a_complete_table_takes_no_lock_on_it(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay that starts (or reconnects) while an app transaction holds the table it finds
    complete changes nothing and waits for no lock: another app write commits meanwhile."""
    got: list[OutboxMessage] = []
    with database_of("postgres", request, tmp_path) as database:
        commit(database, "a", "orders.paid")  # the current release's table
        table = outbox_table(database.table)
        relay_name = unique_name("rs_relay")
        url = f"{database.url}&application_name={relay_name}"
        with contextlib.closing(database.connect()) as holder, Relay(url, got.append) as relay:
            holder.execute(f'LOCK TABLE "{table}" IN ROW EXCLUSIVE MODE')
            thread, outcome = started(relay)
            try:
                done_or_waiting(thread, database, relay_name)
                app_write(database, "b")
                assert holder.info.transaction_status == TransactionStatus.INTRANS
            finally:
                holder.rollback()
                thread.join(WAIT)
            assert outcome == [1]
            assert relay.run_once() == 1
        assert [m.payload for m in got] == [b"a-0", b"b-0"]
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_b29_a_schema_lock_not_granted_in_time_leaves_no_wait_behind_on_the_server(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another relay in the middle of an upgrade (its advisory lock held): the relay's wait for
    it ends on the server, within the relay's bound and before `read_timeout` (1 s) would cut
    the connection, so nothing of it stays queued; the batch goes on, the upgrade deferred."""
    got: list[OutboxMessage] = []
    with database_of("postgres", request, tmp_path) as database:
        table = first_release_table(database)
        commit(database, "a", "orders.paid")
        relay_name = unique_name("rs_relay")
        url = f"{database.url}&application_name={relay_name}&read_timeout=1"
        with contextlib.closing(database.connect()) as holder, Relay(url, got.append) as relay:
            holder.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
            assert relay.run_once() == 1
            assert not waiting(database, relay_name)
            assert any("deferred" in r.getMessage() for r in caplog.records)
            holder.rollback()
            app_write(database, "b")
            assert relay.run_once() == 1
            assert columns(database, table) == sorted(PARKING)
        assert [m.payload for m in got] == [b"a-0", b"b-0"]


def test_b29_a_long_named_table_of_an_earlier_release_keeps_its_indexes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An outbox table of 55 characters made by an earlier release has the two partial indexes
    PostgreSQL named by cutting `T_outbox_unpublished` and `T_outbox_published` to 63: the
    relay finds them, builds none beside them, and takes no lock to do so."""
    with make_database("postgres", request, tmp_path) as database:
        stem = unique_name("Rs_Long")
        database.table = stem + "x" * (48 - len(stem))  # its outbox: 48 + 7 = 55 characters
        table = first_release_table(database)
        database.extra_tables.append(table)
        outbox = OutboxTable(table, "postgresql")
        with contextlib.closing(database.connect()) as conn:
            (missing,) = conn.execute(outbox.missing).fetchall()
        assert list(missing)[-2:] == [False, False]  # the indexes, found under their names
        assert [sql.split(" ADD COLUMN ")[1].split()[0] for sql in outbox.upgrades(missing)] == [
            "attempts",
            "last_error",
            "parked_at",
        ]  # the parking columns only: no index is built again
