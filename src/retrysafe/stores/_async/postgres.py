"""The PostgreSQL store: production, shared by many app processes on many machines.

Each primitive is one statement on the records table (`stores/_pg_sql.py`), so atomicity lives
in PostgreSQL: `INSERT ... ON CONFLICT DO UPDATE ... WHERE` for claims, conditional `UPDATE` and
`DELETE ... WHERE token = ...` for the holder's operations. Connections come from a psycopg pool
that opens on first use; the table is created on first use too, or up front by `create_schema`.
Waiters sleep on LISTEN/NOTIFY instead of polling; only records a waiter marked are notified.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, TypeGuard

from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from retrysafe._clock import Clock, SystemClock
from retrysafe._concurrency import monotonic
from retrysafe._engine import may_take
from retrysafe._errors import FencedError, StoreError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe.stores import _pg_sql as pg
from retrysafe.stores._async._common import poll_until_settled
from retrysafe.stores.base import StoreStats, encode_part, new_token, poll_delays

__all__ = ["AsyncPostgresStore"]

# A claim that finds a conflicting row it may not take reads that row; if the row changed in
# between (released, completed with no retention), the claim runs again, a bounded number of
# times: each round means another client made progress.
_CLAIM_ATTEMPTS = 8

# How long a waiter tries for a pooled connection to LISTEN on before it polls instead.
_LISTENER_WAIT = 0.25


def _running(record: Record | None, now: float) -> TypeGuard[Record]:
    """Return whether a waiter must go on: the record is in flight under a live lease."""
    return record is not None and record.state is State.IN_FLIGHT and record.lease_expires_at > now


class AsyncPostgresStore:
    """A store in a PostgreSQL table, reached through a connection pool.

    Args:
        conninfo: a libpq connection string or `postgresql://` URL (without the store's own
            options; see `from_url`).
        table: the records table; created on first use if missing.
        connect_timeout: seconds to wait for a new connection (libpq counts whole seconds).
        pool_min: connections the pool keeps open.
        pool_max: the most connections the pool opens.
        pool_timeout: seconds to wait for a pooled connection; past it, and whenever the server
            cannot be reached, primitives raise `StoreUnavailableError`.
        clock: the time source for leases and retention.
    """

    # A waiter re-reads its record at least this often, even without a notification, so a
    # change of the clock (or a notification lost with its connection) cannot strand it.
    _recheck_interval: float = 1.0

    def __init__(
        self,
        conninfo: str,
        *,
        table: str = pg.DEFAULT_TABLE,
        connect_timeout: float = 5.0,
        pool_min: int = 1,
        pool_max: int = 10,
        pool_timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        options = pg.PostgresOptions(
            table=table,
            connect_timeout=connect_timeout,
            pool_min=pool_min,
            pool_max=pool_max,
            pool_timeout=pool_timeout,
        )
        self.clock: Clock = clock or SystemClock()
        self.table = pg.RecordTable.for_table(options.table)
        # Opened on first use, inside the running event loop (see `_ready`).
        self._pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            conninfo,
            min_size=options.pool_min,
            max_size=options.pool_max,
            timeout=options.pool_timeout,
            kwargs={"autocommit": True, "connect_timeout": options.connect_timeout_seconds},
            open=False,
            name=f"retrysafe-{options.table}",
        )
        self._schema_ready = False
        self._closed = False
        # Waiters hold a connection while they listen; at most half the pool, so they never
        # starve the completions they are waiting for.
        self._max_listeners = options.pool_max // 2
        self._listeners = 0
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> AsyncPostgresStore:
        """Build the store from `postgresql://user@host:port/db?table=...` (or `postgres://`).

        Store options in the query string: `table` (default `retrysafe_records`),
        `connect_timeout` (seconds, default 5), `pool_min` (1), `pool_max` (10), `pool_timeout`
        (seconds, default 10). Any other query parameter goes to libpq (`sslmode=require`).
        """
        conninfo, options = pg.parse_url(url)
        return cls(
            conninfo,
            table=options.table,
            connect_timeout=options.connect_timeout,
            pool_min=options.pool_min,
            pool_max=options.pool_max,
            pool_timeout=options.pool_timeout,
            clock=clock,
        )

    async def create_schema(self) -> None:
        """Create the records table and its indexes if missing.

        Safe to call from many processes at once and to repeat. The store also does it on first
        use when the table is missing; call it at deploy time when the application's database
        user may not create tables.
        """
        with pg.translate_errors():
            await self._open_pool()
            async with self._pool.connection() as conn:
                await self._create_schema_with(conn)
        self._schema_ready = True

    async def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record."""
        params = pg.identity_params(identity)
        params["fingerprint"] = encode_part(fingerprint)
        with pg.translate_errors():
            await self._ready()
            async with self._pool.connection() as conn:
                for _ in range(_CLAIM_ATTEMPTS):
                    now = self.clock.now()
                    params.update(
                        token=new_token(),
                        now=now,
                        lease_expires_at=now + lease,
                        expires_at=now + lease + retention,
                    )
                    cursor = await conn.execute(self.table.claim_or_get, params, binary=True)
                    row = await cursor.fetchone()
                    if row is None:
                        continue  # the row that stopped the claim is newer than the snapshot
                    record = pg.record_from_row(row)
                    if row[-1]:
                        return Claim(record, acquired=True, taken_over=row[-2])
                    if not may_take(record, fingerprint, now):
                        return Claim(record, acquired=False)
        raise StoreError(f"The record kept changing during {_CLAIM_ATTEMPTS} claim attempts.")

    async def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done; waiters are notified."""
        now = self.clock.now()
        row = await self._held_row(
            self.table.complete_lean,
            identity,
            token,
            now,
            outcome=outcome,
            expires_at=now + retention,
            channel=self.table.channel,
        )
        return pg.record_from_row((*row[:9], outcome, *row[10:]))  # not echoed: the caller's

    async def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record; waiters are notified."""
        await self._held_row(
            self.table.release, identity, token, self.clock.now(), channel=self.table.channel
        )

    async def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease, and the retention deadline by as much."""
        now = self.clock.now()
        row = await self._held_row(
            self.table.renew, identity, token, now, lease_expires_at=now + lease
        )
        return pg.record_from_row(row)

    async def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase."""
        row = await self._held_row(
            self.table.checkpoint,
            identity,
            token,
            self.clock.now(),
            recovery_point=encode_part(recovery_point),
        )
        return pg.record_from_row(row)

    async def get(self, identity: Identity) -> Record | None:
        """Return the live record, or None."""
        with pg.translate_errors():
            await self._ready()
            async with self._pool.connection() as conn:
                return await self._read(conn, identity, self.clock.now())

    async def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state; waiters are notified."""
        rows = await self._fetch(
            self.table.delete, {"id": identity.digest(), "channel": self.table.channel}
        )
        return bool(rows)

    async def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention."""
        if limit <= 0:
            return 0
        rows = await self._fetch(self.table.purge, {"now": self.clock.now(), "limit": limit})
        return int(rows[0][0])

    async def list_records(
        self,
        *,
        namespace: str | None = None,
        scope: str | None = None,
        state: State | None = None,
        created_before: float | None = None,
        limit: int = 100,
    ) -> list[Record]:
        """Return live records matching every given filter, newest first."""
        query, params = pg.list_query(
            self.table,
            now=self.clock.now(),
            namespace=namespace,
            scope=scope,
            state=state,
            created_before=created_before,
            limit=limit,
        )
        return [pg.record_from_row(row) for row in await self._fetch(query, params)]

    async def stats(self) -> StoreStats:
        """Return counts of live records."""
        rows = await self._fetch(self.table.stats, {"now": self.clock.now()})
        in_flight, done, bytes_stored, oldest = rows[0]
        return StoreStats(
            in_flight=in_flight,
            done=done,
            bytes_stored=int(bytes_stored),
            oldest_in_flight_at=oldest,
        )

    async def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Wait on LISTEN/NOTIFY until the record settles or `timeout` passes.

        The waiter listens before it reads and marks the record watched, so a completion just
        before the wait is seen by the read and one just after notifies it. With no pooled
        connection to spare, it polls with backoff instead.
        """
        deadline = monotonic() + timeout
        if timeout <= 0:
            return await self.get(identity)
        conn = await self._listener()
        if conn is None:
            return await poll_until_settled(self, identity, max(0.0, deadline - monotonic()))
        clean = False
        try:
            with pg.translate_errors():
                record = await self._wait_listening(conn, identity, deadline)
                await conn.execute(self.table.unlisten)
                # Drop notifications that arrived before UNLISTEN, so the next user of this
                # connection does not receive them.
                async for _ in conn.notifies(timeout=0):
                    pass
                clean = True
            return record
        finally:
            with self._lock:
                self._listeners -= 1
            if not clean:
                # It may still be listening, or mid-statement: never hand it to anyone else.
                await conn.close()
            with pg.translate_errors():
                await self._pool.putconn(conn)

    async def aclose(self) -> None:
        """Close the pool and its connections."""
        self._closed = True
        with pg.translate_errors():
            await self._pool.close()

    async def _open_pool(self) -> None:
        if self._closed:
            raise StoreError("This PostgreSQL store is closed.")
        # Opening twice is a no-op; the pool fills in the background, and the first caller
        # waits for a connection under pool_timeout like everyone else.
        await self._pool.open()

    async def _ready(self) -> None:
        """Open the pool and make sure the table exists, once."""
        if self._schema_ready:
            return
        await self._open_pool()
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                self.table.table_exists, {"quoted": self.table.quoted_name()}
            )
            row = await cursor.fetchone()
            # Creating needs the CREATE privilege even when the table exists, so only try
            # when it, or a column this version added, is missing.
            if row is None or not row[0]:
                await self._create_schema_with(conn)
        self._schema_ready = True

    async def _create_schema_with(self, conn: AsyncConnection[TupleRow]) -> None:
        # Concurrent CREATE TABLE IF NOT EXISTS can still fail on the catalog's unique indexes;
        # the advisory lock makes first users take turns.
        async with conn.transaction():
            await conn.execute(self.table.lock_schema, {"lock": self.table.schema_lock})
            for statement in self.table.create_schema:
                await conn.execute(statement)

    async def _fetch(self, query: sql.Composed, params: dict[str, Any]) -> list[TupleRow]:
        """Run one statement on a pooled connection and return its rows.

        Rows come in PostgreSQL's binary format, as do every record read here: an outcome
        arrives as its bytes rather than as hex text twice their size, decoded again.
        """
        with pg.translate_errors():
            await self._ready()
            async with self._pool.connection() as conn:
                cursor = await conn.execute(query, params, binary=True)
                return await cursor.fetchall()

    async def _held_row(
        self,
        query: sql.Composed,
        identity: Identity,
        token: str,
        now: float,
        **params: Any,
    ) -> TupleRow:
        """Run a statement that acts only for the token holder; no row means fenced."""
        rows = await self._fetch(
            query, {"id": identity.digest(), "token": token, "now": now, **params}
        )
        if not rows:
            raise FencedError(
                "This claim no longer holds the key: its lease was taken over or the record ended."
            )
        return rows[0]

    async def _read(
        self, conn: AsyncConnection[TupleRow], identity: Identity, now: float
    ) -> Record | None:
        params = {"id": identity.digest(), "now": now}
        cursor = await conn.execute(self.table.get, params, binary=True)
        row = await cursor.fetchone()
        return None if row is None else pg.record_from_row(row)

    async def _listener(self) -> AsyncConnection[TupleRow] | None:
        """Return a pooled connection to listen on, or None if none is free soon enough."""
        with pg.translate_errors():
            await self._ready()
        with self._lock:
            if self._listeners >= self._max_listeners:
                return None
            self._listeners += 1
        conn = None
        try:
            with pg.translate_errors(), contextlib.suppress(PoolTimeout):
                conn = await self._pool.getconn(timeout=_LISTENER_WAIT)
        finally:
            if conn is None:
                with self._lock:
                    self._listeners -= 1
        return conn

    async def _wait_listening(
        self, conn: AsyncConnection[TupleRow], identity: Identity, deadline: float
    ) -> Record | None:
        """Listen, then read and mark the record watched; read again on a notification, at
        lease expiry, or every `_recheck_interval` seconds.

        Completions notify only for a watched record (see `_pg_sql._WATCH`). While no read has
        managed to mark it (its row was locked at the time), the waiter polls with backoff.
        At the deadline it returns the last record read.
        """
        digest = identity.digest()
        await conn.execute(self.table.listen)
        record, watched = await self._watch(conn, identity)
        delays = poll_delays()
        while _running(record, self.clock.now()):
            remaining = deadline - monotonic()
            if remaining <= 0:
                return record
            until_lease_ends = record.lease_expires_at - self.clock.now()
            recheck = self._recheck_interval if watched else next(delays)
            period = min(remaining, until_lease_ends, recheck)
            if not await self._notified(conn, digest, period) and period >= remaining:
                return record
            record, watched = await self._watch(conn, identity)
        return record

    async def _watch(
        self, conn: AsyncConnection[TupleRow], identity: Identity
    ) -> tuple[Record | None, bool]:
        """Read the live record, marking it watched; return it and whether it is watched."""
        params = {"id": identity.digest(), "now": self.clock.now()}
        cursor = await conn.execute(self.table.watch, params, binary=True)
        row = await cursor.fetchone()
        return (None, False) if row is None else (pg.record_from_row(row), bool(row[-1]))

    async def _notified(self, conn: AsyncConnection[TupleRow], digest: str, seconds: float) -> bool:
        """Wait up to `seconds` for a notification about record `digest`."""
        end = monotonic() + seconds
        while (left := end - monotonic()) > 0:
            found = False
            # stop_after=1 ends the generator on its own (no break), which releases the
            # connection's lock at once; notifications about other records just loop.
            async for notify in conn.notifies(timeout=left, stop_after=1):
                found = found or notify.payload == digest
            if found:
                return True
        return False
