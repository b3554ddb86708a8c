"""Transactional mode on every driver face: the key commits with the writes, or neither does."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from retrysafe import (
    ConfigurationError,
    Identity,
    InFlightError,
    KeyMismatchError,
    ManualClock,
    State,
    transactions,
)
from tests.transactions.conftest import BoomError, Database, Face

LEASE = 30.0


def test_b29_first_run_commits_effect_and_outcome_in_the_store_table(face: Face) -> None:
    """The first run writes once and its outcome lands in the store's own table, done."""
    paid = face.pay("k1")
    assert not paid.replay
    assert [row[0] for row in face.database.payment_rows("k1")] == [paid.payment_id]
    store = face.database.store(face.clock)
    try:
        record = store.get(face.identity("k1"))
        assert record is not None
        assert record.state is State.DONE
        assert record.outcome == paid.outcome
        assert [r.identity for r in store.list_records()] == [face.identity("k1")]
    finally:
        store.close()


def test_b10_duplicate_replays_the_outcome_without_writing(face: Face) -> None:
    """A repeat of a finished key replays the stored outcome and writes nothing."""
    first = face.pay("k1")
    for _ in range(3):
        again = face.pay("k1")
        assert again.replay
        assert again.outcome == first.outcome
    assert len(face.database.payment_rows()) == 1


def test_b29_exception_rolls_back_the_claim_with_the_writes(face: Face) -> None:
    """An exception leaves neither the write nor the record, so a retry runs on clean state."""
    with pytest.raises(BoomError):
        face.pay("k1", fail=True)
    assert face.database.payment_rows() == []
    store = face.database.store(face.clock)
    try:
        assert store.get(face.identity("k1")) is None
    finally:
        store.close()
    retry = face.pay("k1")
    assert not retry.replay
    assert [row[0] for row in face.database.payment_rows()] == [retry.payment_id]


def test_b13_same_key_with_another_request_is_a_mismatch(face: Face) -> None:
    """The same key with another fingerprint raises KeyMismatchError and writes nothing."""
    face.pay("k1", amount=100)
    with pytest.raises(KeyMismatchError):
        face.pay("k1", amount=999)
    assert [row[2] for row in face.database.payment_rows()] == [100]


def test_b29_a_block_without_complete_rolls_back_and_says_so(face: Face) -> None:
    """Leaving the block without an outcome rolls the writes back and raises."""
    with pytest.raises(RuntimeError, match=r"without tx\.complete"):
        face.pay("k1", forget=True)
    assert face.database.payment_rows() == []
    assert not face.pay("k1").replay


def test_b10_writes_made_during_a_replay_are_rolled_back(face: Face) -> None:
    """A handler that writes despite `tx.replay` commits nothing."""
    first = face.pay("k1")
    again = face.pay("k1", write_on_replay=True)
    assert again.replay
    assert again.outcome == first.outcome
    assert len(face.database.payment_rows()) == 1


def test_b16_a_store_claim_in_flight_refuses_then_is_taken_over(face: Face) -> None:
    """A live in-flight claim made through the store raises InFlightError; once its lease
    has expired, the transaction takes it over and runs."""
    store = face.database.store(face.clock)
    try:
        claim = store.claim(face.identity("k1"), "amount=100", lease=LEASE, retention=3600)
        assert claim.acquired
        with pytest.raises(InFlightError):
            face.pay("k1")
        face.clock.advance(LEASE + 1)
        paid = face.pay("k1")
        assert not paid.replay
        assert paid.taken_over
        record = store.get(face.identity("k1"))
        assert record is not None
        assert record.state is State.DONE
        assert record.token != claim.token
    finally:
        store.close()
    assert len(face.database.payment_rows()) == 1


def test_b21_after_retention_the_key_runs_again(face: Face) -> None:
    """Once the retention has passed, the same key is a new operation."""
    first = face.pay("k1")
    face.clock.advance(24 * 3600 + 1)
    second = face.pay("k1")
    assert not second.replay
    assert second.payment_id != first.payment_id
    assert len(face.database.payment_rows()) == 2


def test_b34_hostile_keys_are_stored_as_given(face: Face) -> None:
    """Quotes, SQL, NUL and non-ASCII in a key reach the database only as parameters."""
    keys = ["'; DROP TABLE payments; --", "nul\x00key", "ключ-🔑", '"quoted"']
    outcomes = {key: face.pay(key).outcome for key in keys}
    for key in keys:
        assert face.pay(key).outcome == outcomes[key]
    assert len(face.database.payment_rows()) == len(keys)


def _sqlite_pay(conn: sqlite3.Connection, database: Database, key: str, clock: ManualClock) -> bool:
    identity = Identity("payments", "tenant-a", key)
    with transactions.sqlite(
        conn, identity=identity, fingerprint="fp", table=database.table, clock=clock
    ) as tx:
        if tx.replay:
            return True
        conn.execute(f"INSERT INTO {database.payments} VALUES (?, ?, 1)", (key, key))  # noqa: S608 - a unique_name() table
        tx.complete(b"ok")
    return False


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_b29_sqlite_savepoint_follows_the_outer_transaction(
    database: Database, clock: ManualClock
) -> None:
    """Inside an open sqlite3 transaction the block is a savepoint: the outer rollback undoes
    record and writes together, the outer commit keeps both."""
    conn = sqlite3.connect(database.dsn)
    try:
        conn.execute(f"INSERT INTO {database.payments} VALUES ('outer', 'outer', 0)")  # noqa: S608 - a unique_name() table
        assert conn.in_transaction
        assert not _sqlite_pay(conn, database, "k1", clock)
        conn.rollback()
        assert database.payment_rows() == []
        assert not _sqlite_pay(conn, database, "k1", clock)  # nothing was kept: it runs again
        conn.execute(f"INSERT INTO {database.payments} VALUES ('outer', 'outer', 0)")  # noqa: S608 - a unique_name() table
        assert not _sqlite_pay(conn, database, "k2", clock)
        conn.commit()
        assert _sqlite_pay(conn, database, "k2", clock)
    finally:
        conn.close()
    assert sorted(row[0] for row in database.payment_rows()) == ["k1", "k2", "outer"]


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_b29_psycopg_savepoint_follows_the_outer_transaction(
    database: Database, clock: ManualClock
) -> None:
    """Inside an open psycopg transaction the block is a savepoint that commits with it."""
    import psycopg

    identity = Identity("payments", "tenant-a", "k1")
    insert = f"INSERT INTO {database.payments} VALUES (%s, %s, 1)"  # noqa: S608 - a unique_name() table
    with psycopg.connect(database.dsn) as conn:
        for outer_commits in (False, True):
            conn.execute(insert, (f"outer-{outer_commits}", "outer"))
            with transactions.psycopg(
                conn, identity=identity, fingerprint="fp", table=database.table, clock=clock
            ) as tx:
                assert not tx.replay
                conn.execute(insert, (f"inner-{outer_commits}", "k1"))
                tx.complete(b"ok")
            if outer_commits:
                conn.commit()
            else:
                conn.rollback()
    assert sorted(row[0] for row in database.payment_rows()) == ["inner-True", "outer-True"]


@pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)
def test_row_factories_of_the_caller_do_not_matter(database: Database, clock: ManualClock) -> None:
    """A connection with a dict or Row factory works: the records are read as plain tuples."""
    identity = Identity("payments", "tenant-a", "k1")
    options: dict[str, Any] = {
        "identity": identity,
        "fingerprint": "fp",
        "table": database.table,
        "clock": clock,
    }
    for _ in range(2):
        conn: Any
        if database.kind == "sqlite":
            conn = sqlite3.connect(database.dsn)
            conn.row_factory = sqlite3.Row
            conn.text_factory = bytes
            with transactions.sqlite(conn, **options) as tx:
                if not tx.replay:
                    tx.complete(b"ok")
        else:
            import psycopg
            from psycopg.rows import dict_row

            conn = psycopg.connect(database.dsn, row_factory=dict_row)
            with transactions.psycopg(conn, **options) as tx:
                if not tx.replay:
                    tx.complete(b"ok")
        conn.close()
        assert tx.outcome == b"ok"
    assert tx.replay


def test_settings_are_checked_before_any_io() -> None:
    """Bad settings and a finished transaction are refused with clear errors."""
    conn = sqlite3.connect(":memory:")
    identity = Identity("n", "s", "k")
    with pytest.raises(ConfigurationError):
        transactions.sqlite(conn, identity=identity, fingerprint="fp", lease=0)
    with pytest.raises(ConfigurationError):
        transactions.sqlite(conn, identity="k", fingerprint="fp")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        transactions.sqlite(conn, identity=identity, fingerprint="fp", table="bad name")
    tx = transactions.sqlite(conn, identity=identity, fingerprint="fp")
    with pytest.raises(RuntimeError):
        _ = tx.replay
    with tx:
        with pytest.raises(TypeError):
            tx.complete("text")  # type: ignore[arg-type]
        tx.complete(b"ok")
    with pytest.raises(RuntimeError), tx:
        pass
    with transactions.sqlite(conn, identity=identity, fingerprint="fp") as again:
        assert again.replay
        with pytest.raises(RuntimeError):
            again.complete(b"other")
    with pytest.raises(TypeError):
        transactions.psycopg(conn, identity=identity, fingerprint="fp")  # type: ignore[call-overload]
    conn.close()
