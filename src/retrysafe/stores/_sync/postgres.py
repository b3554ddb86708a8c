# Generated from stores/_async/postgres.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The PostgreSQL store: production, shared by many app processes on many machines.

Each primitive is one statement on the records table, so atomicity lives in PostgreSQL:
`INSERT ... ON CONFLICT DO UPDATE ... WHERE` for claims, conditional `UPDATE` and
`DELETE ... WHERE token = ...` for the holder's operations. The statements and the primitives
that run them are shared with transactional mode (`stores/_sql/postgres.py`,
`postgres_records.py`); this module adds the pool, which opens on first use, the table, created
on first use too or up front by `create_schema`, and waiting: waiters sleep on LISTEN/NOTIFY
instead of polling, and only records a waiter marked are notified. The async store sends the
hot primitives' statements of concurrent calls in batches on a connection of its own
(`stores/_postgres_pipeline.py`) unless told not to. A process forked after using the store
(gunicorn `--preload`) leaves its parent's connections and threads alone and opens its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from typing import Unpack

from psycopg_pool import ConnectionPool, PoolTimeout

from retrysafe._clock import Clock, SystemClock
from retrysafe._concurrency import monotonic
from retrysafe._errors import StoreClosedError
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._sync._common import poll_until_settled
from retrysafe.stores._sync.postgres_lending import Lent, Shared, borrow, reach
from retrysafe.stores._sync.postgres_records import (
    PostgresRecords,
    RecordsConnection,
)
from retrysafe.stores._deletes import FORKS, PostgresDeletes
from retrysafe.stores._home import OneLoop
from retrysafe.stores._sql import DEFAULT_TABLE, renewal_timeout
from retrysafe.stores._sql.postgres import record_table
from retrysafe.stores._sql.postgres_connection import (
    LEFT_BEHIND,
    PostgresOptions,
    sync_executor,
    parse_url,
    translate_errors,
)
from retrysafe.stores._sql.postgres_deadline import ReadDeadline, unavailable
from retrysafe.stores.base import Listing, ListingOptions, StoreStats

__all__ = ["PostgresStore"]

# How long a waiter tries for a pooled connection to LISTEN on before it polls instead.
_LISTENER_WAIT = 0.25


class PostgresStore:
    """A store in a PostgreSQL table, reached through a connection pool.

    Args:
        conninfo: a libpq connection string or `postgresql://` URL (without the store's own
            options; see `from_url`).
        table: the records table; created on first use if missing.
        connect_timeout: seconds to wait for a new connection (libpq counts whole seconds).
        pool_min: connections the pool keeps open.
        pool_max: the most connections the pool opens.
        pool_timeout: seconds to wait for a pooled connection while all are lent out (a renewal
            waits within its own bound, `renewal_timeout`); past it primitives raise
            `StoreUnavailableError`, and at once (within `connect_timeout`) while the server
            refuses connections and none is idle.
        clock: the time source for leases and retention.
        read_timeout: seconds a statement may wait for the server's reply; past it, its
            connection is cut and the call raises `StoreUnavailableError` (a stalled server or
            network; a wait may take its own timeout besides, a renewal a sixth of its lease if
            that is shorter: `renewal_timeout`).
        autopipeline: send the statements of claims, completions and reads that concurrent
            calls issue in one event-loop turn as one batch, in one transaction, on one
            connection of the store's own (the async face only: the sync store runs each on a
            pooled connection).
    """

    # A waiter re-reads its record at least this often, even without a notification, so a
    # change of the clock (or a notification lost with its connection) cannot strand it.
    _recheck_interval: float = 1.0

    def __init__(
        self,
        conninfo: str,
        *,
        table: str = DEFAULT_TABLE,
        connect_timeout: float = 5.0,
        pool_min: int = 1,
        pool_max: int = 10,
        pool_timeout: float = 10.0,
        clock: Clock | None = None,
        autopipeline: bool = True,
        read_timeout: float = 30.0,
    ) -> None:
        options = PostgresOptions(
            table=table,
            connect_timeout=connect_timeout,
            pool_min=pool_min,
            pool_max=pool_max,
            pool_timeout=pool_timeout,
            autopipeline=autopipeline,
            read_timeout=read_timeout,
        )
        self.clock: Clock = clock or SystemClock()
        self.table = record_table(options.table)
        self._records = PostgresRecords(self.table)
        self._conninfo, self._options = conninfo, options
        self._reached = False  # False: none made yet, or one lost or refused since: `reach`
        self._pool = self._new_pool()  # opened on first use, in the running loop (`_ready`)
        self._runner = sync_executor(conninfo, options)  # the hot primitives', if not None
        self._deadline = ReadDeadline(options.read_timeout)
        self._deletes = PostgresDeletes(
            conninfo, self.table.deleted_channel, timeout=options.connect_timeout
        )
        self._schema_ready = False
        self._closed = False
        # Waiters hold a connection while they listen; at most half the pool, so they never
        # starve the completions they are waiting for.
        self._max_listeners = options.pool_max // 2
        self._listeners = 0
        self._lock = threading.Lock()
        self._forks = FORKS.count  # a fork's child leaves all the above behind: see `_forked`
        self._loop = OneLoop("PostgreSQL")  # one event loop at a time (`stores/_home.py`)

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> PostgresStore:
        """Build the store from `postgresql://user@host:port/db?table=...` (or `postgres://`).

        Store options in the query string: `table` (default `retrysafe_records`),
        `connect_timeout` (seconds, default 5), `pool_min` (1), `pool_max` (10), `pool_timeout`
        (seconds, default 10), `autopipeline` (default true; async face only), `read_timeout`
        (seconds, default 30). Any other query parameter goes to libpq (`sslmode=require`).
        """
        conninfo, options = parse_url(url)
        # The options' fields are this constructor's keyword arguments, under the same names.
        return cls(conninfo, **dataclasses.asdict(options), clock=clock)

    def create_schema(self) -> None:
        """Create the records table and its indexes if missing.

        Safe to call from many processes at once and to repeat. The store also does it on first
        use when the table is missing; call it at deploy time when the application's database
        user may not create tables.
        """
        self._here()
        with translate_errors():
            self._open_pool()
            reach(self)
            with self._pool.connection() as conn:
                self._create_schema_with(conn)
        self._schema_ready = True

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record (one round trip)."""
        with self._statement() as conn:
            return self._records.claim(
                conn, identity, fingerprint, now=self.clock.now, lease=lease, retention=retention
            )

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done; waiters are notified."""
        now = self.clock.now()
        with self._statement() as conn:
            return self._records.complete(
                conn, identity, token, outcome, now=now, retention=retention
            )

    def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record; waiters are notified."""
        now = self.clock.now()
        with self._statement() as conn:
            self._records.release(conn, identity, token, now=now)

    def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease, and the retention deadline by as much: on a pooled
        connection (never queued behind a batch), its wait for that connection and its reply
        due within `renewal_timeout` in all (B16), well before the lease ends."""
        now = self.clock.now()
        within = renewal_timeout(self._options.read_timeout, lease)
        with self._connection(within) as conn:
            return self._records.renew(conn, identity, token, now=now, lease=lease)

    def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase."""
        now = self.clock.now()
        with self._statement() as conn:
            return self._records.checkpoint(conn, identity, token, recovery_point, now=now)

    def get(self, identity: Identity) -> Record | None:
        """Return the live record, or None."""
        with self._statement() as conn:
            return self._records.get(conn, identity, now=self.clock.now())

    def delete_announcements(self) -> PostgresDeletes:
        """Return what subscribes to this store's deletes (LISTEN on the table's delete
        channel), for a replay cache in front of it."""
        return self._deletes

    def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state; waiters are notified, and replay caches."""
        with self._statement() as conn:
            return self._records.delete(conn, identity)

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention."""
        if limit <= 0:
            return 0
        now = self.clock.now()
        with self._connection() as conn:
            return self._records.purge_expired(conn, now=now, limit=limit)

    def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """Return live records matching every given filter, newest first."""
        listing = Listing(**filters)
        now = self.clock.now()
        with self._connection() as conn:
            return self._records.list_records(conn, listing, now=now)

    def stats(self) -> StoreStats:
        """Return counts of live records."""
        now = self.clock.now()
        with self._connection() as conn:
            return self._records.stats(conn, now=now)

    def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Wait on LISTEN/NOTIFY until the record settles or `timeout` passes.

        The waiter listens before it reads and marks the record watched, so a completion just
        before the wait is seen by the read and one just after notifies it. With no pooled
        connection to spare, it polls with backoff instead.
        """
        deadline = monotonic() + timeout
        if timeout <= 0:
            return self.get(identity)
        with self._listening(timeout) as conn:
            if conn is None:
                return poll_until_settled(self, identity, max(0.0, deadline - monotonic()))
            with translate_errors():
                return self._records.wait(
                    conn,
                    identity,
                    deadline=deadline,
                    clock=self.clock,
                    recheck=self._recheck_interval,
                )

    def close(self) -> None:
        """Close the pool and its connections, and the statement runner's (in a forked child,
        those it opened: its parent's are the parent's to close)."""
        self._here()
        self._closed = True
        with translate_errors():
            if self._runner is not None:
                self._runner.close()
            self._pool.close()
        self._deadline.close()

    def _open_pool(self) -> None:
        if self._closed:
            raise StoreClosedError("This PostgreSQL store is closed.")
        # Twice is a no-op; the pool fills in the background (callers wait under pool_timeout).
        self._pool.open()

    def _ready(self) -> None:
        """Open the pool and make sure the table exists, once."""
        if self._schema_ready:
            return
        self._open_pool()
        reach(self)
        with self._pool.connection() as conn:
            armed = self._deadline.arm(conn)  # a cut connection fails, and the pool drops it
            try:
                # Creating needs the CREATE privilege even when the table exists, so only try
                # when it, or a column this version added, is missing.
                if not self._records.exists(conn):
                    self._create_schema_with(conn)
            finally:
                self._deadline.disarm(armed)
        self._schema_ready = True

    def _create_schema_with(self, conn: RecordsConnection) -> None:
        with conn.transaction():
            self._records.create_schema(conn)

    def _connection(self, within: float | None = None) -> Lent:
        """Lend a pooled connection, the table ready, its reply due `within` seconds (default:
        `read_timeout`); psycopg errors become store errors."""
        self._here()
        return Lent(self, within)

    def _statement(self) -> Lent | Shared:
        """Lend where a hot primitive's one statement runs: the statement runner, if any."""
        self._here()
        runner = self._runner
        if runner is None or self._closed:  # closed: the pool says so (`StoreClosedError`)
            return Lent(self)
        return Shared(self, runner)

    @contextlib.contextmanager
    def _listening(self, timeout: float) -> Iterator[RecordsConnection | None]:
        """Lend a pooled connection to listen on for up to `timeout` seconds, or None if none
        is free soon enough."""
        conn = self._listener()
        if conn is None:
            yield None
            return
        clean = False
        armed = None
        try:
            with translate_errors():  # lost already (no socket): a store error
                armed = self._deadline.arm(conn, extra=timeout)
            yield conn
            clean = True
        except Exception as error:
            if armed is not None and armed.cut:  # the reply was late: say so
                raise unavailable(self._deadline.timeout) from error
            raise
        finally:
            with self._lock:
                self._listeners -= 1
            if armed is None or self._deadline.disarm(armed) or not clean:
                # It may still be listening, or mid-statement: never hand it to anyone else.
                conn.close()
            with translate_errors():
                self._pool.putconn(conn)

    def _listener(self) -> RecordsConnection | None:
        """Return a pooled connection to listen on, or None if none is free soon enough."""
        self._here()
        with translate_errors():
            self._ready()
        with self._lock:
            if self._listeners >= self._max_listeners:
                return None
            self._listeners += 1
        conn = None
        try:
            with translate_errors(), contextlib.suppress(PoolTimeout):
                conn = borrow(self, _LISTENER_WAIT)  # never one closed while idle
        finally:
            if conn is None:
                with self._lock:
                    self._listeners -= 1
        return conn

    def _new_pool(self) -> ConnectionPool[RecordsConnection]:
        """A pool that reports how its attempts to connect end, and gives up one that fails:
        calls retry at once (`reach`), not minutes after the server is back, as its backoff."""
        options = self._options
        return ConnectionPool(
            self._conninfo,
            connection_class=RecordsConnection,
            min_size=options.pool_min,
            max_size=options.pool_max,
            timeout=options.pool_timeout,
            kwargs={"autocommit": True, "connect_timeout": options.connect_timeout_seconds},
            open=False,
            name=f"retrysafe-{options.table}",
            configure=self._connected,
            reconnect_timeout=0,
            reconnect_failed=self._refused,
        )

    def _connected(self, conn: RecordsConnection) -> None:
        """The pool made a connection: the server accepts them."""
        self._reached = True

    def _refused(self, pool: object) -> None:
        """The pool gave up an attempt to connect: the server refuses them (or is unreachable)."""
        self._reached = False

    def _here(self) -> None:
        """Follow a fork (`_forked`); refuse a second event loop at once, and trio (`_home.py`)."""
        if self._forks != FORKS.count:
            self._forked()
        self._loop.enter()

    def _forked(self) -> None:
        """In a forked child: leave the parent's pool, statement runner and read deadline
        behind, unused and unclosed (`LEFT_BEHIND`: their sockets and threads are the
        parent's), and open this process's own on first use (B35: a shared socket hands one
        process another's replies, another key's outcome among them)."""
        with LEFT_BEHIND.lock:
            if self._forks == FORKS.count:  # another thread of this child did it first
                return
            LEFT_BEHIND.keep(self._pool, self._runner, self._deadline)
            self._pool = self._new_pool()
            self._runner = sync_executor(self._conninfo, self._options)
            self._deadline = ReadDeadline(self._options.read_timeout)
            self._lock = threading.Lock()  # a thread of the parent may have held it
            self._listeners = 0
            self._schema_ready = False  # so that the first call opens the new pool
            self._reached = False
            self._forks = FORKS.count  # last: other threads wait on the lock until now
