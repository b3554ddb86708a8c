"""How the PostgreSQL store lends a primitive what its statement runs on: a pooled connection
(`Lent`), under the store's read deadline (or a shorter one: a renewal's), or the store's
statement runner (`Shared`); how a call finds out at once that the server refuses
connections (`reach`), where the pool would keep it waiting; and how connections the server
closed while they sat in the pool (a restart, a failover, `pg_terminate_backend`, a proxy's
restart) cost no call, or one (`borrow`, `Lending`).

Classes rather than generator context managers: they cost less client CPU per primitive (see
`Lent`). Either way, psycopg errors become store errors, on the way in and out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg import pq

from retrysafe._concurrency import monotonic
from retrysafe._errors import StoreUnavailableError
from retrysafe.stores._async.postgres_records import AsyncRecordsConnection, AsyncStatementRunner
from retrysafe.stores._sql.postgres_connection import store_error
from retrysafe.stores._sql.postgres_deadline import unavailable

if TYPE_CHECKING:
    from retrysafe.stores._async.postgres import AsyncPostgresStore

__all__ = ["Lending", "Lent", "Shared", "borrow", "reach"]


class Lending:
    """What a primitive borrows its statement's target from: psycopg errors become store
    errors, on the way in and out, and the target is given back. A call that lost its
    connection replaces the pool's idle ones: what closed one (a server restart, a failover)
    most often closed them all, and each found lost one by one would fail a call."""

    __slots__ = ("_store",)

    def __init__(self, store: AsyncPostgresStore) -> None:
        self._store = store

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            late = await self._give_back()
        except psycopg.Error as error:
            raise store_error(error) from error
        if isinstance(raised := exc_info[1], psycopg.Error):
            # Cut under it (`late`: say why), or lost: the server may be gone, and the pool's
            # attempt to replace the connection may not have failed yet; see `reach`.
            failure = late or store_error(raised)
            if isinstance(failure, StoreUnavailableError):
                self._store._reached = False
                if late is None and (self._lost() or _lost(raised)):
                    await _replace_idle(self._store)  # after a cut, `_give_back` did
            raise failure from raised

    def _lost(self) -> bool:
        """Return whether the connection lent was lost (closed under the call)."""
        return False

    async def _give_back(self) -> StoreUnavailableError | None:
        """Nothing to give back, and no deadline to stop: return None (not cut)."""
        return None


class Lent(Lending):
    """A pooled connection lent for one primitive, its reply due `within` seconds (default: the
    store's `read_timeout`); given, `within` bounds the wait for the connection too (default:
    `pool_timeout`).

    A class, and the pool's `getconn`/`putconn`, rather than generator context managers and the
    pool's `connection()`: those cost about a seventh of the client CPU of a claim and its
    completion. `connection()` would also run the connection's own exit, a `commit()` that has
    nothing to do in autocommit; `putconn` still rolls back or closes a connection returned
    mid-transaction or mid-statement.
    """

    __slots__ = ("_armed", "_conn", "_within")

    def __init__(self, store: AsyncPostgresStore, within: float | None = None) -> None:
        super().__init__(store)
        self._within = within

    async def __aenter__(self) -> AsyncRecordsConnection:
        store, within = self._store, self._within
        try:
            await store._ready()
            if within is None:
                if not store._reached:  # none made yet, or one failed or was lost: `reach`
                    await reach(store)
                conn = self._conn = await borrow(store)
            else:  # a renewal's bound counts its wait for a connection too (B16)
                since = monotonic()
                wait = min(within, store._options.pool_timeout)
                conn = self._conn = await borrow(store, wait)
                within -= monotonic() - since
        except psycopg.Error as error:
            raise store_error(error) from error
        try:
            self._armed = store._deadline.arm(conn, within=within)
        except BaseException as error:  # lost already (no socket), or an interruption
            await store._pool.putconn(conn)  # never left out of the pool: the pool checks it
            if isinstance(error, psycopg.Error):
                raise store_error(error) from error
            raise
        return conn

    def _lost(self) -> bool:
        return self._conn.closed

    async def _give_back(self) -> StoreUnavailableError | None:
        """Stop the deadline, then give the connection back, whatever interrupts this (a
        `KeyboardInterrupt`, a job's time limit); if it was cut, or may have been, close it
        first (the pool drops a closed connection) and return the error that says so."""
        store, within, cut = self._store, self._within, True
        try:
            cut = store._deadline.disarm(self._armed)
        finally:
            try:
                if cut:
                    store._deadline.disarm(self._armed)  # again if interrupted: no cut after it
                    await self._conn.close()
            finally:
                await store._pool.putconn(self._conn)
        if not cut:
            return None
        await _replace_idle(store)
        if within is None:
            return unavailable(store._deadline.timeout)
        return unavailable(within, renewal=True)


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


async def reach(store: AsyncPostgresStore) -> None:
    """Unless the store's last attempt to connect succeeded or its pool has a connection idle,
    connect once outside the pool, within `connect_timeout`, and close that connection.

    A server that refuses connections thus fails the call at once with `StoreUnavailableError`:
    the pool would keep the call waiting its whole `pool_timeout` for a connection it cannot
    make (it does not fail its waiters when an attempt fails). Once the server accepts again,
    the first call through here finds out, and waits for the pool, which connects at once (the
    store's pool does not retry in the background: see `AsyncPostgresStore._new_pool`). A pool
    merely busy, all its connections lent out, keeps its callers waiting as before: the last
    attempt to connect succeeded. Renewals do not come here: their wait for the pool is within
    their own bound (B16), shorter than `connect_timeout` may be.
    """
    pool = store._pool
    if store._reached or pool.closed or pool.get_stats().get("pool_available"):
        return
    options = store._options
    try:
        conn = await psycopg.AsyncConnection.connect(
            store._conninfo, connect_timeout=options.connect_timeout_seconds
        )
    except psycopg.Error as error:
        raise store_error(error) from error
    await conn.close()
    store._reached = True


async def borrow(store: AsyncPostgresStore, wait: float | None = None) -> AsyncRecordsConnection:
    """Take a pooled connection, waiting up to `wait` seconds (default: `pool_timeout`).

    One the server closed while it sat idle (a restart, a failover, `pg_terminate_backend`, a
    PgBouncer restart, an idle timeout) is never lent: it is dropped with every other idle one,
    which the same event most often closed, and a new one taken, after `reach` unless `wait`
    is given (a renewal's bound, B16): no call fails for them. Finding it costs a non-blocking
    read of what the server sent meanwhile, no round trip (issue 15: a busy pool's calls pay
    nothing more); a network that forgot the connections silently leaves nothing to read,
    and the first call that meets one fails (a reset, or its read deadline: `Lending`,
    `_give_back`), which replaces them all.
    """
    pool = store._pool
    deadline = None if wait is None else monotonic() + wait
    conn = await pool.getconn(wait)
    while not _open(conn):  # once with psycopg-pool 3.3 (`drain`); before, once per dead one
        await conn.close()
        await pool.putconn(conn)  # the pool drops a closed connection, and opens another
        await _replace_idle(store)
        if deadline is None:
            store._reached = False  # the server may be going down: fail at once if it refuses
            await reach(store)
        conn = await pool.getconn(None if deadline is None else max(0.0, deadline - monotonic()))
    return conn


def _open(conn: AsyncRecordsConnection) -> bool:
    """Return whether the server has not closed `conn`: read what arrived, without waiting.

    A server closing a connection sends a farewell error, then the end of the stream; one read
    can stop after the first. The error, arriving between statements, is only a notice.
    """
    pgconn = conn.pgconn
    try:
        pgconn.consume_input()
        pgconn.consume_input()
    except psycopg.OperationalError:
        return False
    return pgconn.status == pq.ConnStatus.OK


def _lost(error: psycopg.Error) -> bool:
    """Return whether `error` says its connection was lost: no SQLSTATE (the stream ended,
    the socket failed), a connection exception (08), or the server ending the session (57P:
    shutdown, crash, `pg_terminate_backend`, idle timeout); not too many connections (53) nor
    a cancelled statement (57014)."""
    sqlstate = error.sqlstate
    if sqlstate is None:
        return isinstance(error, psycopg.OperationalError)
    return sqlstate.startswith(("08", "57P"))


async def _replace_idle(store: AsyncPostgresStore) -> None:
    """Replace the store's idle connections, pooled and batching: a reply that never came on
    one connection is most often a network that silently dropped them all (a NAT or firewall
    state expired), and each found lost one by one would cost a call its read timeout."""
    drain = getattr(store._pool, "drain", None)
    if drain is not None:  # psycopg_pool 3.3 and later; before, each is dropped when found lost
        await drain()
    if store._runner is not None:
        store._runner.forget_idle()
