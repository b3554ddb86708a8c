"""Versioned consumers in transactional mode: what an entity id and a scope become in the
versions table, and the ids no table can hold, on real SQLite and PostgreSQL.

A scoped entity is stored as `scope` U+001F `entity` (never NUL, which PostgreSQL text cannot
hold); an unscoped one as itself, as every earlier release stored it (B39). An id that no
table can hold (bytes that are not UTF-8, NUL or U+001F, over 512 characters) is refused with
`InvalidKeyError` before any SQL runs, so the delivery is dead-lettered, not requeued forever.
"""

from __future__ import annotations

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
    "8,000 characters": "a" * 8000,
}


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
