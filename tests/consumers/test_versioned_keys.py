"""Versioned consumers in transactional mode: what an entity id and a scope become in the
versions table, and the ids no table can hold, on real SQLite and PostgreSQL.

A scoped entity is stored as `scope` U+001F `entity` (never NUL, which PostgreSQL text cannot
hold); an unscoped one as itself, as every earlier release stored it (B39). An id that no
table can hold (bytes that are not UTF-8, NUL or U+001F) is refused with `InvalidKeyError`
before any SQL runs, and one over what PostgreSQL's index holds when PostgreSQL refuses it, so
the delivery is dead-lettered, not requeued forever. SQLite holds ids of any length.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from retrysafe import InvalidKeyError
from retrysafe.consumers import VersionCounter, message_header, should_requeue, versioned_message
from tests.conftest import drop_postgres_tables, unique_name

# ruff: noqa: S608 - every table is named by unique_name(), never by input

HOSTILE = {
    "bytes that are not UTF-8": b"acct-\xff",
    "a lone surrogate": "acct-\udcff",
    "NUL": "acct\x00-1",
    "the scope separator U+001F": "acct\x1f-1",
}
# 8,000 characters that PostgreSQL cannot compress into its index's 2,704 bytes a row.
INCOMPRESSIBLE = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(125))


class Properties:
    """What pika hands a callback: the message's headers."""

    def __init__(self, **headers: object) -> None:
        self.headers = headers


def keys(table: str, counter: VersionCounter, **options: Any) -> dict[str, Any]:
    """`versioned_message`'s options for the tests' messages."""
    return {
        "namespace": "ledger",
        "entity": message_header("account"),
        "version": message_header("sequence"),
        "counter": counter,
        "table": table,
        **options,
    }


@pytest.fixture(params=["sqlite3", "psycopg"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A sync connection of one driver, and a versions table of its own."""
    table = unique_name("rs_versions")
    if request.param == "sqlite3":
        connection = sqlite3.connect(tmp_path / "app.db")
        try:
            yield connection, table
        finally:
            connection.close()
        return
    url = request.getfixturevalue("postgres_url")
    try:
        with psycopg.connect(url) as connection:
            yield connection, table
    finally:
        drop_postgres_tables(url, table)


def rows(connection: Any, table: str) -> list[tuple[str, str, int]]:
    """The versions table, sorted."""
    found = connection.execute(f'SELECT namespace, entity, version FROM "{table}"').fetchall()
    connection.commit()
    return sorted(tuple(row) for row in found)


def test_b8_scope_in_transactional_mode_keeps_two_tenants_apart(db: tuple[Any, str]) -> None:
    """With `scope=` (a tenant header), each delivery applies on SQLite and PostgreSQL alike:
    one entity id in two scopes has two versions, each skipping its own older ones."""
    connection, table = db
    counter, applied = VersionCounter(), []

    @versioned_message(connection, **keys(table, counter, scope=message_header("tenant")))
    def on_balance(properties: Properties) -> None:
        applied.append((properties.headers["tenant"], properties.headers["sequence"]))

    for tenant, sequence in [("t1", 2), ("t2", 1), ("t1", 1), ("t2", 3), ("t1", 2), ("t2", 2)]:
        on_balance(Properties(tenant=tenant, account="acct-1", sequence=sequence))

    assert applied == [("t1", 2), ("t2", 1), ("t2", 3)]
    assert (counter.applied, counter.stale) == (3, 3)
    assert rows(connection, table) == [
        ("ledger", "t1\x1facct-1", 2),
        ("ledger", "t2\x1facct-1", 3),
    ]


def test_b39_unscoped_entities_keep_the_key_earlier_releases_wrote(db: tuple[Any, str]) -> None:
    """An unscoped entity is stored as itself: a row an earlier release wrote still refuses an
    older version, and a scoped entity whose text looks like a scoped key cannot exist."""
    connection, table = db
    counter = VersionCounter()

    @versioned_message(connection, **keys(table, counter))
    def on_balance(properties: Properties) -> None:
        pass

    on_balance(Properties(account="acct-0", sequence=1))  # creates the table
    mark = "?" if isinstance(connection, sqlite3.Connection) else "%s"
    insert = f'INSERT INTO "{table}" VALUES ({mark}, {mark}, {mark})'
    connection.execute(insert, ("ledger", "acct-1", 5))
    connection.commit()
    on_balance(Properties(account="acct-1", sequence=4))
    on_balance(Properties(account="acct-1", sequence=6))
    assert (counter.applied, counter.stale) == (2, 1)
    assert rows(connection, table) == [("ledger", "acct-0", 1), ("ledger", "acct-1", 6)]


def test_b39_sqlite_scoped_rows_of_earlier_releases_are_still_found(tmp_path: Path) -> None:
    """SQLite stored NUL, so earlier releases' scoped rows there read `scope` NUL `entity`:
    such a row still refuses an older version of its entity, and a newer one moves on."""
    table = unique_name("rs_versions")
    connection = sqlite3.connect(tmp_path / "app.db")
    try:
        connection.execute(
            f'CREATE TABLE "{table}" (namespace TEXT NOT NULL, entity TEXT NOT NULL, '
            "version BIGINT NOT NULL, PRIMARY KEY (namespace, entity))"
        )
        connection.execute(f'INSERT INTO "{table}" VALUES (?, ?, ?)', ("ledger", "t1\x00acct-1", 5))
        connection.commit()
        counter, applied = VersionCounter(), []

        @versioned_message(connection, **keys(table, counter, scope="t1"))
        def on_balance(properties: Properties) -> None:
            applied.append(properties.headers["sequence"])

        for sequence in (4, 5, 6, 5):
            on_balance(Properties(account="acct-1", sequence=sequence))
        assert applied == [6]
        assert (counter.applied, counter.stale) == (1, 3)
    finally:
        connection.close()


@pytest.mark.parametrize("where", ["entity", "scope"])
@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_b4_an_id_no_table_can_hold_is_refused_not_requeued(
    db: tuple[Any, str], what: str, where: str
) -> None:
    """An entity id or scope that the versions table cannot hold raises `InvalidKeyError`,
    which `should_requeue` dead-letters, before any SQL runs: the connection stays usable and
    the next delivery applies."""
    connection, table = db
    counter, applied = VersionCounter(), []

    @versioned_message(connection, **keys(table, counter, scope=message_header("tenant")))
    def on_balance(properties: Properties) -> None:
        applied.append(properties.headers["account"])

    hostile = {"account": "acct-1", "tenant": "t1"}
    hostile["account" if where == "entity" else "tenant"] = HOSTILE[what]
    with pytest.raises(InvalidKeyError, match=where) as refused:
        on_balance(Properties(sequence=1, **hostile))
    assert not should_requeue(refused.value)
    on_balance(Properties(tenant="t1", account="acct-1", sequence=1))
    assert applied == ["acct-1"]
    assert counter.applied == 1


@pytest.mark.anyio
async def test_b8_scope_on_an_async_psycopg_connection(postgres_url: str) -> None:
    """The async face stores a scoped entity the same way, and refuses the same ids."""
    table = unique_name("rs_versions")
    counter, applied = VersionCounter(), []
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url) as connection:

            @versioned_message(connection, **keys(table, counter, scope="tenant-a"))
            async def on_stock(properties: Properties) -> None:
                applied.append(properties.headers["sequence"])

            for sequence in (1, 3, 2):
                await on_stock(Properties(account="sku-1", sequence=sequence))
            with pytest.raises(InvalidKeyError):
                await on_stock(Properties(account=b"sku-\xff", sequence=4))
            async with connection.transaction():
                cursor = await connection.execute(f'SELECT entity, version FROM "{table}"')
                found = await cursor.fetchall()
        assert applied == [1, 3]
        assert found == [("tenant-a\x1fsku-1", 3)]
    finally:
        drop_postgres_tables(postgres_url, table)


def legacy_table(connection: sqlite3.Connection, table: str, *rows: tuple[str, str, int]) -> None:
    """The versions table as an earlier release created and filled it on SQLite."""
    connection.execute(
        f'CREATE TABLE "{table}" (namespace TEXT NOT NULL, entity TEXT NOT NULL, '
        "version BIGINT NOT NULL, PRIMARY KEY (namespace, entity))"
    )
    connection.executemany(f'INSERT INTO "{table}" VALUES (?, ?, ?)', rows)
    connection.commit()


def test_b39_sqlite_rows_of_a_bytes_scope_from_earlier_releases_are_still_found(
    tmp_path: Path,
) -> None:
    """Earlier releases keyed a bytes scope (a pika or aio-pika header) by its `str()`:
    b"acme" as `b'acme'` NUL `acct-1`. This release reads it as the text `acme`; the old row
    still refuses a redelivery of its version (the effect does not happen twice), and where
    the str scope's old row is there too, the newer of the two is carried over."""
    table = unique_name("rs_versions")
    connection = sqlite3.connect(tmp_path / "app.db")
    try:
        legacy_table(
            connection,
            table,
            ("ledger", "b'acme'\x00acct-1", 5),  # str(b"acme"), as 0.1.0 wrote it
            ("ledger", "b'acme'\x00acct-2", 7),
            ("ledger", "acme\x00acct-2", 3),  # the same tenant, once sent as a str header
        )
        counter, applied = VersionCounter(), []

        @versioned_message(connection, **keys(table, counter, scope=message_header("tenant")))
        def on_balance(properties: Properties) -> None:
            applied.append((properties.headers["account"], properties.headers["sequence"]))

        for account, sequence in [("acct-1", 5), ("acct-1", 4), ("acct-2", 7), ("acct-2", 8)]:
            on_balance(Properties(tenant=b"acme", account=account, sequence=sequence))
        on_balance(Properties(tenant="acme", account="acct-1", sequence=6))
        assert applied == [("acct-2", 8), ("acct-1", 6)]
        assert (counter.applied, counter.stale) == (2, 3)
        assert ("ledger", "acme\x1facct-1", 6) in rows(connection, table)
        assert ("ledger", "acme\x1facct-2", 8) in rows(connection, table)
    finally:
        connection.close()


def test_b4_a_long_entity_id_is_applied_where_the_table_holds_it(db: tuple[Any, str]) -> None:
    """No length limit of the library's own: an entity id of 620 characters (a URL), which
    earlier releases applied, is applied on SQLite and PostgreSQL, later versions too; and a
    scoped one of 3,000 characters that PostgreSQL's index compresses."""
    connection, table = db
    counter = VersionCounter()

    @versioned_message(connection, **keys(table, counter, scope=message_header("tenant")))
    def on_page(properties: Properties) -> None:
        pass

    url, long_url = "https://example.com/" + "a/" * 300, "https://example.com/" + "b/" * 1500
    for account, sequence in [(url, 1), (url, 2), (url, 1), (long_url, 1)]:
        on_page(Properties(tenant="docs", account=account, sequence=sequence))
    assert (counter.applied, counter.stale) == (3, 1)
    assert ("ledger", f"docs\x1f{url}", 2) in rows(connection, table)


def test_b4_sqlite_holds_any_length_of_entity_id(tmp_path: Path) -> None:
    """SQLite has no limit on a key's length, so neither has the versions table there."""
    connection = sqlite3.connect(tmp_path / "app.db")
    try:
        counter = VersionCounter()

        @versioned_message(connection, **keys(unique_name("rs_versions"), counter))
        def on_page(properties: Properties) -> None:
            pass

        on_page(Properties(account=INCOMPRESSIBLE, sequence=1))
        on_page(Properties(account=INCOMPRESSIBLE, sequence=1))
        assert (counter.applied, counter.stale) == (1, 1)
    finally:
        connection.close()


@pytest.mark.parametrize("where", ["entity", "scope"])
def test_b4_an_id_over_what_postgresql_indexes_is_refused_not_requeued(
    postgres_url: str, where: str
) -> None:
    """An id PostgreSQL's primary key index cannot hold (over 2,704 bytes a row once
    compressed) raises `InvalidKeyError`, dead-lettered, and nothing is applied; the
    connection stays usable and the next delivery applies."""
    table = unique_name("rs_versions")
    counter, applied = VersionCounter(), []
    try:
        with psycopg.connect(postgres_url) as connection:

            @versioned_message(connection, **keys(table, counter, scope=message_header("tenant")))
            def on_balance(properties: Properties) -> None:
                applied.append(properties.headers["account"])

            hostile = {"account": "acct-1", "tenant": "t1"}
            hostile["account" if where == "entity" else "tenant"] = INCOMPRESSIBLE
            with pytest.raises(InvalidKeyError, match="index") as refused:
                on_balance(Properties(sequence=1, **hostile))
            assert not should_requeue(refused.value)
            on_balance(Properties(tenant="t1", account="acct-1", sequence=1))
            assert rows(connection, table) == [("ledger", "t1\x1facct-1", 1)]
        assert applied == ["acct-1"]
    finally:
        drop_postgres_tables(postgres_url, table)
