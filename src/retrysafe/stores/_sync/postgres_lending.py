# Generated from stores/_async/postgres_lending.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""How the PostgreSQL store lends a primitive what its statement runs on: a pooled connection
(`Lent`), under the store's read deadline, or the store's statement runner (`Shared`).

Classes rather than generator context managers: they cost less client CPU per primitive (see
`Lent`). Either way, psycopg errors become store errors, on the way in and out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from retrysafe.stores._sync.postgres_records import RecordsConnection, StatementRunner
from retrysafe.stores._sql.postgres_connection import store_error
from retrysafe.stores._sql.postgres_deadline import unavailable

if TYPE_CHECKING:
    from retrysafe.stores._sync.postgres import PostgresStore

__all__ = ["Lending", "Lent", "Shared"]


class Lending:
    """What a primitive borrows its statement's target from: psycopg errors become store
    errors, on the way in and out, and the target is given back."""

    __slots__ = ("_store",)

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def __exit__(self, *exc_info: object) -> None:
        try:
            late = self._give_back()
        except psycopg.Error as error:
            raise store_error(error) from error
        if isinstance(raised := exc_info[1], psycopg.Error):
            if late:  # its connection was cut under it: say why
                raise unavailable(self._store._deadline.timeout) from raised
            raise store_error(raised) from raised

    def _give_back(self) -> bool:
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

    def __enter__(self) -> RecordsConnection:
        store = self._store
        try:
            store._ready()
            conn = self._conn = store._pool.getconn()
        except psycopg.Error as error:
            raise store_error(error) from error
        try:
            self._armed = store._deadline.arm(conn)
        except psycopg.Error as error:  # lost already (no socket): the pool checks it
            store._pool.putconn(conn)
            raise store_error(error) from error
        return conn

    def _give_back(self) -> bool:
        """Stop the deadline, then give the connection back (closed first if it was cut)."""
        cut = self._store._deadline.disarm(self._armed)
        if cut:
            self._conn.close()  # the pool drops a closed connection
        self._store._pool.putconn(self._conn)
        return cut


class Shared(Lending):
    """The store's statement runner, lent for one primitive."""

    __slots__ = ("_runner",)

    def __init__(self, store: PostgresStore, runner: StatementRunner) -> None:
        super().__init__(store)
        self._runner = runner

    def __enter__(self) -> StatementRunner:
        try:
            self._store._ready()
        except psycopg.Error as error:
            raise store_error(error) from error
        return self._runner
