"""How the PostgreSQL store lends a primitive what its statement runs on: a pooled connection
(`Lent`), under the store's read deadline, or the store's statement runner (`Shared`).

Classes rather than generator context managers: they cost less client CPU per primitive (see
`Lent`). Either way, psycopg errors become store errors, on the way in and out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from retrysafe.stores._async.postgres_records import AsyncRecordsConnection, AsyncStatementRunner
from retrysafe.stores._sql.postgres_connection import store_error
from retrysafe.stores._sql.postgres_deadline import unavailable

if TYPE_CHECKING:
    from retrysafe.stores._async.postgres import AsyncPostgresStore

__all__ = ["Lending", "Lent", "Shared"]


class Lending:
    """What a primitive borrows its statement's target from: psycopg errors become store
    errors, on the way in and out, and the target is given back."""

    __slots__ = ("_store",)

    def __init__(self, store: AsyncPostgresStore) -> None:
        self._store = store

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            late = await self._give_back()
        except psycopg.Error as error:
            raise store_error(error) from error
        if isinstance(raised := exc_info[1], psycopg.Error):
            if late:  # its connection was cut under it: say why
                raise unavailable(self._store._deadline.timeout) from raised
            raise store_error(raised) from raised

    async def _give_back(self) -> bool:
        """Nothing to give back, and no deadline to stop: return False (not cut)."""
        return False


class Lent(Lending):
    """A pooled connection lent for one primitive.

    A class, and the pool's `getconn`/`putconn`, rather than generator context managers and the
    pool's `connection()`: those cost about a seventh of the client CPU of a claim and its
    completion. `connection()` would also run the connection's own exit, a `commit()` that has
    nothing to do in autocommit; `putconn` still rolls back or closes a connection returned
    mid-transaction or mid-statement.
    """

    __slots__ = ("_armed", "_conn")

    async def __aenter__(self) -> AsyncRecordsConnection:
        store = self._store
        try:
            await store._ready()
            conn = self._conn = await store._pool.getconn()
        except psycopg.Error as error:
            raise store_error(error) from error
        try:
            self._armed = store._deadline.arm(conn)
        except psycopg.Error as error:  # lost already (no socket): the pool checks it
            await store._pool.putconn(conn)
            raise store_error(error) from error
        return conn

    async def _give_back(self) -> bool:
        """Stop the deadline, then give the connection back (closed first if it was cut)."""
        cut = self._store._deadline.disarm(self._armed)
        if cut:
            await self._conn.close()  # the pool drops a closed connection
        await self._store._pool.putconn(self._conn)
        return cut


class Shared(Lending):
    """The store's statement runner, lent for one primitive."""

    __slots__ = ("_runner",)

    def __init__(self, store: AsyncPostgresStore, runner: AsyncStatementRunner) -> None:
        super().__init__(store)
        self._runner = runner

    async def __aenter__(self) -> AsyncStatementRunner:
        try:
            await self._store._ready()
        except psycopg.Error as error:
            raise store_error(error) from error
        return self._runner
