"""Idempotent write helpers on MySQL and MariaDB (B31, B34): repeating one leaves the same rows.

MySQL has no `RETURNING` and no `ON CONFLICT`: the helpers write, then read the row back under
the lock the write (or a locking read) took. The tests of test_writes.py that fit every
database run here on each MySQL face (`writer` is `MySQLWriter`); the tests below are MySQL's
own: a conflict on another unique key, binary values through aiomysql, a key column that an
update changes, and SQLAlchemy tables.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from retrysafe import transactions
from retrysafe.transactions import Inserted
from tests.transactions import test_writes as shared
from tests.transactions.conftest import Database, Face
from tests.transactions.test_writes import (
    USERS,
    Writer,
    _user,
    test_b31_delete_by_key_repeated_deletes_once,
    test_b31_insert_if_absent_repeated_leaves_one_row,
    test_b31_update_by_key_repeated_leaves_the_same_row,
    test_b34_values_are_parameters_and_names_are_checked,
)

pytestmark = pytest.mark.mysql

__all__ = [
    "test_b31_delete_by_key_repeated_deletes_once",
    "test_b31_insert_if_absent_repeated_leaves_one_row",
    "test_b31_update_by_key_repeated_leaves_the_same_row",
    "test_b34_values_are_parameters_and_names_are_checked",
]


class MySQLWriter(Writer):
    """`Writer` on a MySQL face: aiomysql connections and `mysql+aiomysql` sessions when async."""

    async def _acall(self, helper: str, *args: Any, **kwargs: Any) -> Any:
        function: Callable[..., Any] = getattr(transactions, helper)
        if self.face.name == "aiomysql-async":
            connection = await self.database.aconnect()
            try:
                result = await function(connection, self.table, *args, **kwargs)
                await connection.commit()
                return result
            finally:
                await connection.ensure_closed()
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
        from sqlalchemy.pool import NullPool

        url = self.database.sqlalchemy_url(asynchronous=True)
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with AsyncSession(engine) as session, session.begin():
                return await function(session, self.table, *args, **kwargs)
        finally:
            await engine.dispose()


@pytest.fixture
def writer(mysql_face: Face) -> Writer:
    """The write helpers on each MySQL face."""
    return MySQLWriter(mysql_face)


def test_b31_racing_inserts_make_one_row_on_mysql(mysql_database: Database) -> None:
    """Ten concurrent inserts of one unique key make one row, and all return it
    (test_writes.py's test, on PyMySQL)."""
    shared.test_b31_racing_inserts_make_one_row(mysql_database)


def test_b31_a_conflict_on_another_unique_key_is_the_drivers_error(
    mysql_database: Database,
) -> None:
    """A row that conflicts on a unique key other than `unique` is not "the row that is
    there": the driver's duplicate-key error stands (as `ON CONFLICT (unique)` lets it through
    on PostgreSQL), and the transaction can go on."""
    import pymysql

    users = mysql_database.create_table("rs_users", USERS)
    connection = mysql_database.connect()
    try:
        first = transactions.insert_if_absent(connection, users, _user(), unique=["id"])
        clash = {**_user(), "email": "ada@example.com"}  # a new id, the same (tenant, email)
        with pytest.raises(pymysql.err.IntegrityError):
            transactions.insert_if_absent(connection, users, clash, unique=["id"])
        again = transactions.insert_if_absent(
            connection, users, {**first.row, "name": "x"}, unique=["id"]
        )
        assert (again.inserted, again.row) == (False, first.row)
        connection.commit()
    finally:
        connection.close()
    assert len(mysql_database.execute(f"SELECT * FROM {users}")) == 1  # noqa: S608 - a unique_name() table


def test_b34_binary_values_reach_mysql_through_aiomysql_as_given(mysql_database: Database) -> None:
    """Bytes (NUL, quotes, non-UTF-8) are written and read back byte for byte through
    aiomysql, whose own escaping of bytes PyMySQL 1.2 broke; text keys with quotes too."""
    blobs = mysql_database.create_table("rs_blobs", "k VARCHAR(64) PRIMARY KEY, v VARBINARY(64)")
    value = b"\x00'\"\\\xff\xfe; DROP TABLE x; --"

    async def main() -> tuple[Inserted, Inserted]:
        connection = await mysql_database.aconnect()
        try:
            first = await transactions.ainsert_if_absent(
                connection, blobs, {"k": "it's", "v": value}, unique=["k"]
            )
            again = await transactions.ainsert_if_absent(
                connection, blobs, {"k": "it's", "v": b"other"}, unique=["k"]
            )
            await connection.commit()
            return first, again
        finally:
            await connection.ensure_closed()

    first, again = asyncio.run(main())
    assert first == Inserted({"k": "it's", "v": value}, inserted=True)
    assert again == Inserted({"k": "it's", "v": value}, inserted=False)
    assert mysql_database.execute(f"SELECT k, v FROM {blobs}") == [("it's", value)]  # noqa: S608 - a unique_name() table


def test_b31_an_update_that_moves_the_key_returns_the_moved_row(mysql_database: Database) -> None:
    """`update_by_key` may set the key's own columns: it returns the row where it is now,
    and a repeat with the old key finds nothing."""
    users = mysql_database.create_table("rs_users", USERS)
    connection = mysql_database.connect()
    try:
        row = transactions.insert_if_absent(connection, users, _user(), unique=["id"]).row
        old = {"tenant": "t1", "email": "ada@example.com"}
        moved = transactions.update_by_key(connection, users, old, {"email": "ada@new.example"})
        assert moved == {**row, "email": "ada@new.example"}
        assert transactions.update_by_key(connection, users, old, {"email": "x"}) is None
        connection.commit()
    finally:
        connection.close()


def test_b31_sqlalchemy_tables_and_mapped_classes_on_mysql(mysql_database: Database) -> None:
    """With a `mysql+pymysql` session, the table may be a `Table` or a mapped class."""
    from sqlalchemy import Column, MetaData, String, Table, create_engine
    from sqlalchemy.orm import DeclarativeBase, Session
    from sqlalchemy.pool import NullPool

    users = mysql_database.create_table("rs_users", USERS)
    table = Table(
        users,
        MetaData(),
        Column("id", String(255), primary_key=True),
        Column("tenant", String(255)),
        Column("email", String(255)),
        Column("name", String(255)),
    )

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __table__ = table

    engine = create_engine(mysql_database.sqlalchemy_url(), poolclass=NullPool)
    try:
        with Session(engine) as session, session.begin():
            assert transactions.insert_if_absent(
                session, table, _user(), unique=["tenant", "email"]
            ).inserted
            session.add(User(id=secrets.token_hex(6), tenant="t1", email="bob@x", name="Bob"))
            again = transactions.insert_if_absent(  # the pending User is flushed first
                session, User, _user(email="bob@x"), unique=["tenant", "email"]
            )
            assert (again.inserted, again.row["name"]) == (False, "Bob")
            assert transactions.delete_by_key(
                session, User, {"tenant": "t1", "email": "ada@example.com"}
            )
    finally:
        engine.dispose()
    assert [row[2] for row in mysql_database.execute(f"SELECT * FROM {users}")] == ["bob@x"]  # noqa: S608 - a unique_name() table
