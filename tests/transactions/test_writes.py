"""Idempotent write helpers: repeating each one any number of times leaves the same rows (B31)."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from retrysafe import ConfigurationError, StoreError, transactions
from retrysafe.transactions import Inserted
from tests.transactions.conftest import Database, Face

REPEATS = 5
USERS = "id TEXT PRIMARY KEY, tenant TEXT NOT NULL, email TEXT NOT NULL, name TEXT, "
USERS += "UNIQUE (tenant, email)"


class Writer:
    """Runs one write helper on a face, in a transaction of its own that it commits."""

    def __init__(self, face: Face) -> None:
        self.face = face
        self.database = face.database
        self.users = face.database.create_table("rs_users", USERS)
        self.table: object = self.users

    def __call__(self, helper: str, *args: Any, **kwargs: Any) -> Any:
        """Call `helper` (its sync name) with the connection and the users table first."""
        name = self.face.name
        if name.endswith("-async"):
            return asyncio.run(self._acall(f"a{helper}", *args, **kwargs))
        function: Callable[..., Any] = getattr(transactions, helper)
        if name == "sqlalchemy":
            from sqlalchemy import create_engine
            from sqlalchemy.orm import Session
            from sqlalchemy.pool import NullPool

            engine = create_engine(self.database.sqlalchemy_url(), poolclass=NullPool)
            try:
                with Session(engine) as session, session.begin():
                    return function(session, self.table, *args, **kwargs)
            finally:
                engine.dispose()
        connection = self.database.connect()
        try:
            result = function(connection, self.table, *args, **kwargs)
            connection.commit()
            return result
        finally:
            connection.close()

    async def _acall(self, helper: str, *args: Any, **kwargs: Any) -> Any:
        function: Callable[..., Any] = getattr(transactions, helper)
        if self.face.name == "psycopg-async":
            connection = await self.database.aconnect()
            try:
                result = await function(connection, self.table, *args, **kwargs)
                await connection.commit()
                return result
            finally:
                await connection.close()
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
        from sqlalchemy.pool import NullPool

        engine = create_async_engine(self.database.sqlalchemy_url(), poolclass=NullPool)
        try:
            async with AsyncSession(engine) as session, session.begin():
                return await function(session, self.table, *args, **kwargs)
        finally:
            await engine.dispose()

    def rows(self) -> list[tuple[Any, ...]]:
        """Return the committed users, sorted."""
        return sorted(self.database.execute(f"SELECT * FROM {self.users}"))  # noqa: S608 - a unique_name() table


@pytest.fixture
def writer(face: Face) -> Writer:
    """The write helpers on each driver face."""
    return Writer(face)


def _user(name: str = "Ada", email: str = "ada@example.com") -> dict[str, object]:
    """A new user row with a fresh id, as a retried request would build it."""
    return {"id": secrets.token_hex(6), "tenant": "t1", "email": email, "name": name}


def test_b31_insert_if_absent_repeated_leaves_one_row(writer: Writer) -> None:
    """The first insert makes the row; every repeat returns that row and inserts nothing."""
    first = writer("insert_if_absent", _user(), unique=("tenant", "email"))
    assert isinstance(first, Inserted)
    assert first.inserted
    for _ in range(REPEATS):
        again = writer("insert_if_absent", _user(name="Other"), unique=["tenant", "email"])
        assert not again.inserted
        assert again.row == first.row
    assert writer.rows() == [(first.row["id"], "t1", "ada@example.com", "Ada")]


def test_b31_update_by_key_repeated_leaves_the_same_row(writer: Writer) -> None:
    """Setting values by unique key any number of times leaves one row in one state."""
    user = writer("insert_if_absent", _user(), unique=("tenant", "email")).row
    key = {"tenant": "t1", "email": "ada@example.com"}
    for _ in range(REPEATS):
        row = writer("update_by_key", key, {"name": "Ada Lovelace"})
        assert row == {**user, "name": "Ada Lovelace"}
    assert writer.rows() == [(user["id"], "t1", "ada@example.com", "Ada Lovelace")]
    assert writer("update_by_key", {"tenant": "t1", "email": "nobody@x"}, {"name": "x"}) is None


def test_b31_delete_by_key_repeated_deletes_once(writer: Writer) -> None:
    """The first delete removes the row; repeats remove nothing and leave the others."""
    writer("insert_if_absent", _user(), unique=("tenant", "email"))
    kept = writer("insert_if_absent", _user(email="bob@x"), unique=("tenant", "email")).row
    key = {"tenant": "t1", "email": "ada@example.com"}
    assert writer("delete_by_key", key)
    for _ in range(REPEATS):
        assert not writer("delete_by_key", key)
    assert writer.rows() == [(kept["id"], "t1", "bob@x", "Ada")]


def test_b34_values_are_parameters_and_names_are_checked(writer: Writer) -> None:
    """Hostile values are stored verbatim; a table or column that is not a plain identifier
    is refused before anything runs, as are NULL keys and keys that match several rows."""
    hostile = "'); DROP TABLE users; --"
    row = writer("insert_if_absent", _user(name=hostile, email=hostile), unique=("tenant", "email"))
    assert row.row["name"] == hostile
    with pytest.raises(ConfigurationError):
        writer("update_by_key", {"tenant": "t1", "email": hostile}, {"name; --": "x"})
    with pytest.raises(ConfigurationError):
        writer("update_by_key", {"tenant": None}, {"name": "x"})
    with pytest.raises(ConfigurationError):
        writer("insert_if_absent", _user(), unique="email")
    writer("insert_if_absent", _user(email="second"), unique=("tenant", "email"))
    with pytest.raises(StoreError, match="not a unique key"):
        writer("update_by_key", {"tenant": "t1"}, {"name": "everyone"})
    assert {row[3] for row in writer.rows()} == {hostile, "Ada"}  # the failed update rolled back
    writer.table = "users; DROP TABLE users"
    with pytest.raises(ConfigurationError):
        writer("delete_by_key", {"tenant": "t1"})


def test_b34_a_misspelled_column_is_an_error_on_every_face(writer: Writer) -> None:
    """A key or value column the table does not have is the database's error, and nothing
    changes (SQLite read a double-quoted unknown name as a string: the update matched nothing,
    and a delete keyed `{"stauts": "stauts"}` matched every row)."""
    user = writer("insert_if_absent", _user(), unique=("tenant", "email")).row
    with pytest.raises(Exception, match=r"(?i)kee"):  # each driver's own error
        writer("update_by_key", {"kee": "t1"}, {"name": "x"})
    with pytest.raises(Exception, match=r"(?i)stauts"):
        writer("delete_by_key", {"stauts": "stauts"})
    assert writer.rows() == [(user["id"], "t1", "ada@example.com", "Ada")]


@pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)
def test_b31_racing_inserts_make_one_row(database: Database) -> None:
    """Ten concurrent inserts of one unique key make one row, and all return it."""
    users = database.create_table("rs_users", USERS)
    barrier = threading.Barrier(10)

    def insert() -> Inserted:
        connection = database.connect()
        try:
            barrier.wait(10)
            result = transactions.insert_if_absent(
                connection, users, _user(), unique=("tenant", "email")
            )
            connection.commit()
            return result
        finally:
            connection.close()

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: insert(), range(10)))
    assert sum(result.inserted for result in results) == 1
    assert len({result.row["id"] for result in results}) == 1
    assert len(database.execute(f"SELECT * FROM {users}")) == 1  # noqa: S608 - a unique_name() table


@pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)
def test_b31_sqlalchemy_tables_and_mapped_classes(database: Database) -> None:
    """With a session, the table may be a `Table` or a mapped class, not only a name."""
    from sqlalchemy import Column, MetaData, String, Table, create_engine
    from sqlalchemy.orm import DeclarativeBase, Session
    from sqlalchemy.pool import NullPool

    users = database.create_table("rs_users", USERS)
    table = Table(
        users,
        MetaData(),
        Column("id", String, primary_key=True),
        Column("tenant", String),
        Column("email", String),
        Column("name", String),
    )

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __table__ = table

    engine = create_engine(database.sqlalchemy_url(), poolclass=NullPool)
    try:
        with Session(engine) as session, session.begin():
            assert transactions.insert_if_absent(
                session, table, _user(), unique=["tenant", "email"]
            ).inserted
            again = transactions.insert_if_absent(
                session, User, _user(), unique=["tenant", "email"]
            )
            assert not again.inserted
            assert transactions.delete_by_key(
                session, User, {"tenant": "t1", "email": "ada@example.com"}
            )
    finally:
        engine.dispose()
