"""The outbox table next to a records table whose name has capitals, on PostgreSQL (B29): an
outbox write finds the table, so it takes the advisory lock that makes creators take turns
only while the table is missing, and remembers the table only once it is committed.

A real PostgreSQL server; the records table is this test's own, named with capitals (quoted
identifiers keep them, and an unquoted lookup would fold them to lower case).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrysafe import Identity, transactions
from retrysafe.outbox import outbox_table
from tests.conftest import unique_name
from tests.outbox.test_parking import commit
from tests.transactions.conftest import Database, make_database

pytestmark = pytest.mark.postgres


@contextlib.contextmanager
def mixed_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh PostgreSQL database whose records table is named with capitals."""
    with make_database("postgres", request, tmp_path) as database:
        database.table = unique_name("Rs_Records")
        database.extra_tables.append(outbox_table(database.table))
        yield database


def payloads(database: Database) -> list[bytes]:
    """The payloads in the outbox table, in id order."""
    table = outbox_table(database.table)
    rows = database.execute(f'SELECT payload FROM "{table}" ORDER BY id')  # noqa: S608
    return [bytes(row[0]) for row in rows]


def test_b29_an_outbox_write_to_a_table_with_capitals_takes_no_lock_once_it_exists(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Once the table exists, a transaction that writes messages holds no advisory lock, so
    another key's transaction commits while it is still open, without waiting for it."""
    with mixed_case(request, tmp_path) as database:
        commit(database, "first", "orders.paid")  # creates the records and outbox tables
        with contextlib.closing(database.connect()) as holder:
            holder.execute("SELECT 1")  # the caller's transaction, left open below
            identity = Identity("orders", "t", "held")
            with transactions.psycopg(
                holder, identity=identity, fingerprint="f", table=database.table
            ) as tx:
                tx.outbox.add("orders.paid", b"held")
                tx.complete(b"done")
            locks = database.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = ?",
                (holder.info.backend_pid,),
            )
            assert locks == [(0,)]
            with contextlib.closing(database.connect()) as other:
                other.execute("SET lock_timeout = '5s'")  # a wait for `holder` fails, bounded
                other.commit()
                with transactions.psycopg(
                    other,
                    identity=Identity("orders", "t", "other"),
                    fingerprint="f",
                    table=database.table,
                ) as tx:
                    tx.outbox.add("orders.paid", b"other")
                    tx.complete(b"done")
            holder.commit()
        assert payloads(database) == [b"first-0", b"held", b"other"]


def test_b29_an_outbox_table_made_in_a_transaction_that_rolls_back_is_made_again(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A table created, then found, in one caller's transaction that rolls back is not taken
    for committed: the next transaction creates it again and its messages commit."""
    with mixed_case(request, tmp_path) as database:
        with contextlib.closing(database.connect()) as conn:
            conn.execute("SELECT 1")  # the caller's transaction, around both blocks
            for key in ("a", "b"):  # "a" creates the tables, "b" finds them, uncommitted
                identity = Identity("orders", "t", key)
                with transactions.psycopg(
                    conn, identity=identity, fingerprint="f", table=database.table
                ) as tx:
                    tx.outbox.add("orders.paid", key.encode())
                    tx.complete(b"done")
            conn.rollback()
        commit(database, "c", "orders.paid")
        assert payloads(database) == [b"c-0"]


def test_b29_a_dropped_outbox_table_is_made_again(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A table remembered as committed, then dropped, fails the one write that finds it
    missing; that write forgets it, and the next transaction creates it again."""
    with mixed_case(request, tmp_path) as database:
        commit(database, "a", "orders.paid")
        commit(database, "b", "orders.paid")  # finds the committed table: remembered
        database.execute(f'DROP TABLE "{outbox_table(database.table)}"')
        with pytest.raises(Exception, match="does not exist"):
            commit(database, "c", "orders.paid")
        commit(database, "d", "orders.paid")
        assert payloads(database) == [b"d-0"]


@pytest.mark.parametrize("length", [55, 56, 63])
def test_b29_an_outbox_table_with_a_long_name_has_both_of_its_indexes(
    request: pytest.FixtureRequest, tmp_path: Path, length: int
) -> None:
    """An outbox table whose index names would pass PostgreSQL's 63 characters (records
    tables of 55 and 56 characters have outbox tables of 62 and 63; one of 63 has a shortened
    outbox name of 63) still gets both of its partial indexes: truncated, the two names would
    be one, or the table's own, and `CREATE INDEX IF NOT EXISTS` would skip them."""
    with make_database("postgres", request, tmp_path) as database:
        stem = unique_name("Rs_Long")
        database.table = stem + "x" * (length - len(stem))
        table = outbox_table(database.table)
        database.extra_tables.append(table)
        commit(database, "a", "orders.paid")
        rows = database.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = ? AND strpos(indexdef, 'WHERE') > 0",
            (table,),
        )
        partial = sorted(str(row[0]).rsplit("WHERE ", 1)[1] for row in rows)
        assert partial == ["(published_at IS NOT NULL)", "(published_at IS NULL)"]
