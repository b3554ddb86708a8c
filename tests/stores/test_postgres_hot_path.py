"""The PostgreSQL store's hot path (issue 15): what a claim and a completion cost the database.

Each primitive is one prepared statement in autocommit, with no transaction statements around
it; a claim answered from the record (a replay, a mismatch, a duplicate in flight) locks and
writes nothing; a pooled connection, with the cursors it keeps, goes on working after a failed
statement; and a pool with no free connection is unavailable. Every test works on its own table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import anyio
import psycopg
import pytest
from psycopg import sql

from retrysafe import (
    Identity,
    ManualClock,
    StoreError,
    StoreUnavailableError,
)
from retrysafe.stores.postgres import AsyncPostgresStore, PostgresStore
from tests.conftest import unique_name
from tests.stores.conftest import OpenStore

LEASE = 30.0
RETENTION = 3600.0


def with_options(url: str, **options: object) -> str:
    """Return `url` with query options added."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{urlencode(options)}"


def ident(key: str = "key-1") -> Identity:
    """An identity in this module's namespace."""
    return Identity("pg-hot", "tenant", key)


@pytest.fixture
def table(postgres_url: str) -> Iterator[str]:
    """A fresh table name, dropped after the test."""
    name = unique_name()
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def _xmax(postgres_url: str, table: str, identity: Identity) -> str:
    """Return the xmax of the record's row: a row lock or an update sets it."""
    query = sql.SQL("SELECT xmax::text FROM {} WHERE id = %s").format(sql.Identifier(table))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute(query, [identity.digest()]).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("case", ["replay", "mismatch", "in flight"])
def test_a_claim_answered_from_the_record_locks_and_writes_nothing(
    open_face: OpenStore, postgres_url: str, table: str, case: str
) -> None:
    """A claim that finds a live record it may not take returns it without locking its row, so
    it needs no transaction id, no WAL record and no commit flushed to disk."""
    clock = ManualClock()
    store = open_face(with_options(postgres_url, table=table), clock)
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    if case != "in flight":
        store.complete(ident(), first.token, b"stored", retention=RETENTION)
    before = _xmax(postgres_url, table, ident())
    again = store.claim(ident(), "other" if case == "mismatch" else "fp", lease=LEASE, retention=1)
    assert not again.acquired
    assert again.record.token == first.token
    assert again.record.outcome == (None if case == "in flight" else b"stored")
    assert _xmax(postgres_url, table, ident()) == before == "0"


def test_a_claim_still_takes_a_record_it_may_take(
    open_face: OpenStore, postgres_url: str, table: str
) -> None:
    """A record past its retention, or an expired lease of the same request, is still taken over
    by the claim that finds it, in the same statement."""
    clock = ManualClock()
    store = open_face(with_options(postgres_url, table=table), clock)
    held = store.claim(ident("lease"), "fp", lease=LEASE, retention=RETENTION)
    done = store.claim(ident("retention"), "fp", lease=LEASE, retention=RETENTION)
    store.complete(ident("retention"), done.token, b"old", retention=10)
    clock.advance(LEASE + 1)
    takeover = store.claim(ident("lease"), "fp", lease=LEASE, retention=RETENTION)
    assert takeover.acquired
    assert takeover.taken_over
    assert takeover.token != held.token
    fresh = store.claim(ident("retention"), "other", lease=LEASE, retention=RETENTION)
    assert fresh.acquired
    assert not fresh.taken_over
    assert fresh.record.outcome is None


def _frontend_messages(trace: Path) -> Counter[str]:
    """Count the messages the client sent, by type, in a libpq trace."""
    sent: Counter[str] = Counter()
    for line in trace.read_text().splitlines():
        direction, _, message = line.split("\t")[:3]
        if direction == "F":
            sent[message.split()[0] if message else ""] += 1
    return sent


def test_each_primitive_is_one_prepared_statement_in_autocommit(
    postgres_url: str, table: str, tmp_path: Path
) -> None:
    """Once a pooled connection has run a statement a few times, a claim, a completion and a
    replay each send one prepared statement (Bind, Describe, Execute, Sync) and nothing else:
    no BEGIN or COMMIT, no SET, no parsing."""
    store = PostgresStore.from_url(with_options(postgres_url, table=table, pool_max=1))
    try:
        for index in range(8):  # past psycopg's prepare_threshold (5) on the one connection
            warm = store.claim(ident(f"warm-{index}"), "fp", lease=LEASE, retention=RETENTION)
            store.complete(ident(f"warm-{index}"), warm.token, b"x", retention=RETENTION)
            store.claim(ident(f"warm-{index}"), "fp", lease=LEASE, retention=RETENTION)
        trace = tmp_path / "libpq.trace"
        with trace.open("w") as sink:
            with store._pool.connection() as conn:
                conn.pgconn.trace(sink.fileno())
                conn.pgconn.set_trace_flags(
                    psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE
                )
            try:
                claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
                store.complete(ident(), claim.token, b"done", retention=RETENTION)
                assert not store.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired
            finally:
                with store._pool.connection() as conn:
                    conn.pgconn.untrace()
        assert _frontend_messages(trace) == {"Bind": 3, "Describe": 3, "Execute": 3, "Sync": 3}
        assert trace.read_text().count('"_pg3_') == 3  # each Bind names a prepared statement
    finally:
        store.close()


def _hold_uncommitted_row(postgres_url: str, table: str, identity: Identity) -> psycopg.Connection:
    """Insert the record's row in a transaction left open, so a claim of it waits."""
    conn = psycopg.connect(postgres_url)
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, namespace, scope, key, fingerprint, state, token, created_at, "
            "lease_expires_at, expires_at) VALUES (%s, 'n', 's', 'k', 'fp', 'in_flight', 't', "
            "0, 0, 0)"
        ).format(sql.Identifier(table)),
        [identity.digest()],
    )
    return conn


def test_a_pooled_connection_keeps_working_after_a_failed_statement(
    open_face: OpenStore, postgres_url: str, table: str
) -> None:
    """A claim that fails on the server (here: lock_timeout, waiting on another transaction's
    row) raises StoreError, and the same pooled connection, with the cursors it keeps, runs the
    next statements normally."""
    url = with_options(postgres_url, table=table, pool_max=1, options="-c lock_timeout=200ms")
    store = open_face(url)
    store.get(ident("warm-up"))  # the table exists before another transaction writes to it
    blocker = _hold_uncommitted_row(postgres_url, table, ident())
    try:
        with pytest.raises(StoreError) as caught:
            store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        assert isinstance(caught.value.__cause__, psycopg.errors.LockNotAvailable)
    finally:
        blocker.rollback()
        blocker.close()
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert claim.acquired
    assert store.complete(ident(), claim.token, b"ok", retention=RETENTION).outcome == b"ok"
    again = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert again.record.outcome == b"ok"


def test_a_libpq_option_with_a_space_reaches_the_server(postgres_url: str, table: str) -> None:
    """A libpq parameter whose value holds a space (`options=-c name=value`) reaches libpq as
    written: the store passes it on percent-encoded, which libpq decodes, not with `+`."""
    url = with_options(postgres_url, table=table, options="-c lock_timeout=1500ms")
    store = PostgresStore.from_url(url)
    try:
        store.get(ident())
        with store._pool.connection() as conn:
            assert conn.execute("SHOW lock_timeout").fetchone() == ("1500ms",)
    finally:
        store.close()


def test_a_pool_with_no_free_connection_is_unavailable(postgres_url: str, table: str) -> None:
    """With every pooled connection lent out, a primitive waits pool_timeout and then raises
    StoreUnavailableError, on both faces (the async one without auto-pipelining, whose claims
    need no pooled connection)."""
    url = with_options(postgres_url, table=table, pool_max=1, pool_timeout=0.3)
    store = PostgresStore.from_url(url)
    try:
        store.get(ident())
        held = store._pool.getconn()
        try:
            with pytest.raises(StoreUnavailableError):
                store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        finally:
            store._pool.putconn(held)
        assert store.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired
    finally:
        store.close()
    anyio.run(_pool_exhausted_async, with_options(url, autopipeline="false"))


async def _pool_exhausted_async(url: str) -> None:
    store = AsyncPostgresStore.from_url(url)
    try:
        await store.get(ident())
        held = await store._pool.getconn()
        try:
            with pytest.raises(StoreUnavailableError):
                await store.claim(ident("async"), "fp", lease=LEASE, retention=RETENTION)
        finally:
            await store._pool.putconn(held)
        assert (await store.claim(ident("async"), "fp", lease=LEASE, retention=RETENTION)).acquired
    finally:
        await store.aclose()
