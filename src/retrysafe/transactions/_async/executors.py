"""How the idempotent write helpers run a statement on the caller's psycopg or SQLAlchemy driver.

An executor knows its database's `Dialect` (the placeholder, the identifier quote, whether
writes return rows) and returns a statement's rows as dicts, whatever row factory the caller's
connection uses. `_dispatch.async_executor` picks the one for a connection; the `sqlite3` one
is sync only (`transactions/_sqlite.py`), the MySQL drivers' is with their backend
(`_async/mysql.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from retrysafe.transactions._write_sql import Dialect, Row, session_dialect

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["AsyncExecutor", "AsyncPsycopgExecutor", "AsyncSessionExecutor"]


class AsyncExecutor(Protocol):
    """Runs the write helpers' statements on one connection or session."""

    dialect: Dialect

    async def rows(self, statement: str, params: Sequence[object]) -> list[Row]:
        """Run `statement` with positional `params`; return its rows (none if it has none)."""
        ...


class AsyncPsycopgExecutor:
    """Statements on a psycopg connection, in its open transaction."""

    dialect = Dialect("%s")

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection

    async def rows(self, statement: str, params: Sequence[object]) -> list[Row]:
        """Run `statement`; return its rows as dicts."""
        from psycopg.rows import dict_row  # noqa: PLC0415 - psycopg is optional

        async with self.connection.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(statement, tuple(params))
            return list(await cursor.fetchall()) if cursor.description is not None else []


class AsyncSessionExecutor:
    """Statements on a SQLAlchemy session's connection, after its pending ORM writes."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        bound = session.get_bind().dialect
        self.dialect = session_dialect(bound.name, bound.paramstyle)

    async def rows(self, statement: str, params: Sequence[object]) -> list[Row]:
        """Flush the session, then run `statement`; return its rows as dicts."""
        # Pending ORM writes go first, so they and this statement run in the order written.
        await self.session.flush()
        connection = await self.session.connection()
        result = await connection.exec_driver_sql(statement, tuple(params))
        return [dict(row) for row in result.mappings().all()] if result.returns_rows else []
