# Generated from stores/_async/mysql.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The MySQL/MariaDB store (`mysql://user@host/db`): production, shared by many processes.

Records live in one InnoDB table, keyed by the identity's digest. A claim is one
`INSERT ... ON DUPLICATE KEY UPDATE` on that primary key, which inserts the record, takes it
over (its retention ended, or its lease expired under the same fingerprint) or changes
nothing; InnoDB locks the row either way, and the claim reads it back under that lock in the
same transaction: the claimant won exactly when the record carries its new token (MySQL
returns no row from a write, and the affected-rows count depends on the client's flags). The
holder's operations are `UPDATE`/`DELETE ... WHERE id AND token AND state = 'in_flight'`;
no row means fenced (B17). The statements, and the primitives that run them on one connection,
are shared with transactional mode (`stores/_sql/mysql.py`, `mysql_records.py`); this module
adds the pool (`mysql_pool.py`), the table, created on first use or by `create_schema`, retries
and waiting.

Each primitive is one transaction and one round trip: a write and the read of its row go as one
multi-statement query, `START TRANSACTION; ...; COMMIT`, on autocommit connections. Sessions
run at READ COMMITTED, so locking statements lock the rows they find and no gaps, except where
InnoDB always does: the duplicate-key check of an insert locks the gap before the key. That is
why concurrent claims of one key can deadlock when the transaction that held it rolls back or
deletes it (their waiting locks become gap locks, then each blocks the other's insert). InnoDB
then rolls one transaction back whole (ER_LOCK_DEADLOCK, 1213), so the store runs it again, up
to `_ATTEMPTS` times with a short random pause: nothing of it was applied, so nothing can run
twice. A lock wait that outlasts `innodb_lock_wait_timeout` (1205) is not retried: the store is
unavailable for that call.

MySQL has no LISTEN/NOTIFY: a waiter polls with bounded backoff (5 ms doubling to 250 ms), and a
completion, release or delete made through this store object wakes its waiters in this process
at once.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TypeVar, Unpack

import pymysql  # type: ignore[import-untyped]

from retrysafe._clock import Clock, SystemClock
from retrysafe._concurrency import Wakeups, sleep, monotonic
from retrysafe._errors import FencedError
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._sync._common import poll_until_settled
from retrysafe.stores._sync.mysql_pool import MySQLPool
from retrysafe.stores._sync.mysql_records import MySQLRecords
from retrysafe.stores._home import unusable_here
from retrysafe.stores._sql import renewal_timeout
from retrysafe.stores._sql.mysql import mysql_table
from retrysafe.stores._sql.mysql_connection import (
    MySQLArguments,
    MySQLOptions,
    connection_lost,
    deadlocked,
    parse_url,
    store_error,
    translate_errors,
)
from retrysafe.stores._sql.mysql_io import Work, left_until
from retrysafe.stores.base import Listing, ListingOptions, StoreStats

__all__ = ["MySQLStore"]

T = TypeVar("T")

# A transaction InnoDB rolled back to break a deadlock runs again, at most this many times in
# all, after a random pause of up to _PAUSE * 2**attempt seconds.
_ATTEMPTS = 6
_PAUSE = 0.002


class MySQLStore:
    """A store in a MySQL or MariaDB (InnoDB) table, reached through a connection pool.

    Every argument is a keyword (`MySQLArguments`); `host`, `user` and `database` are required.

    Args:
        host: the server's host name or address.
        user: the user to log in as.
        database: the database that holds the records table.
        password: the user's password (default: none).
        port: the server's TCP port (default 3306).
        table: the records table (default `retrysafe_records`); created on first use if missing.
        connect_timeout: seconds to wait for a new connection (default 5).
        pool_max: the most connections the pool opens (default 10).
        pool_timeout: seconds to wait for a pooled connection (default 10; a renewal waits
            within its own bound, `renewal_timeout`); past it, and whenever the server cannot
            be reached, primitives raise `StoreUnavailableError`.
        lock_timeout: whole seconds a statement waits for a row lock (`innodb_lock_wait_timeout`
            of the store's sessions); None, the default, keeps the server's (50 by default).
        read_timeout: seconds a primitive may wait for the server's reply before the
            connection is dropped and `StoreUnavailableError` raised (a server or network that
            stalls mid-statement); longer than the lock waits. None, the default: 30 s more
            than the lock wait (`lock_timeout`, else InnoDB's default of 50 s), so 80 s. A
            renewal waits a sixth of its lease instead if that is shorter (`renewal_timeout`).
        ssl: connect with TLS, the server's certificate verified against the system's CAs
            (default false).
        ssl_ca: connect with TLS, the server's certificate verified against this CA file.
        clock: the time source for leases and retention (default: the system clock).
    """

    def __init__(self, *, clock: Clock | None = None, **arguments: Unpack[MySQLArguments]) -> None:
        options = MySQLOptions(**arguments)
        self.clock: Clock = clock or SystemClock()
        self.table = mysql_table(options.table)
        self._records = MySQLRecords(self.table, batched=True)
        self._pool = MySQLPool(options)
        self._reply_timeout = options.reply_timeout
        self._wakeups = Wakeups()
        self._schema_ready = False

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> MySQLStore:
        """Build the store from `mysql://user[:password]@host[:port]/db?table=...`.

        Store options in the query string: `table` (default `retrysafe_records`),
        `connect_timeout` (seconds, default 5), `pool_max` (10), `pool_timeout` (seconds,
        default 10), `lock_timeout` (whole seconds; default: the server's), `read_timeout`
        (seconds; default: the lock wait plus 30), `ssl` (default false), `ssl_ca` (a CA file;
        implies `ssl`). Anything else is refused.
        """
        # The options' fields are this constructor's keyword arguments, under the same names.
        return cls(**dataclasses.asdict(parse_url(url)), clock=clock)

    def create_schema(self) -> None:
        """Create the records table and its indexes if missing.

        Safe to call from many processes at once and to repeat. The store also does it on first
        use when the table is missing; call it at deploy time when the application's database
        user may not create tables.
        """
        self._call(self._records.create_schema, ready=False)
        self._schema_ready = True

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record (one round trip)."""
        return self._call(
            lambda conn: self._records.claim(
                conn, identity, fingerprint, now=self.clock.now(), lease=lease, retention=retention
            )
        )

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done; waiters here are woken."""
        record = self._call(
            lambda conn: self._records.complete(
                conn, identity, token, outcome, now=self.clock.now(), retention=retention
            )
        )
        self._wakeups.wake(identity.digest())
        return record

    def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record; waiters here are woken."""
        self._call(
            lambda conn: self._records.release(conn, identity, token, now=self.clock.now())
        )
        self._wakeups.wake(identity.digest())

    def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease, and the retention deadline by as much: its wait for a
        connection and its replies due within `renewal_timeout` in all (B16), well before the
        lease ends."""
        return self._call(
            lambda conn: self._records.renew(
                conn, identity, token, now=self.clock.now(), lease=lease
            ),
            within=renewal_timeout(self._reply_timeout, lease),
        )

    def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase."""
        return self._call(
            lambda conn: self._records.checkpoint(
                conn, identity, token, recovery_point, now=self.clock.now()
            )
        )

    def get(self, identity: Identity) -> Record | None:
        """Return the live record, or None."""
        return self._call(
            lambda conn: self._records.get(conn, identity, now=self.clock.now())
        )

    def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state; waiters here are woken."""
        deleted = self._call(lambda conn: self._records.delete(conn, identity))
        self._wakeups.wake(identity.digest())
        return deleted

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention, oldest first."""
        if limit <= 0:
            return 0
        return self._call(
            lambda conn: self._records.purge_expired(conn, now=self.clock.now(), limit=limit)
        )

    def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """Return live records matching every given filter, newest first."""
        listing = Listing(**filters)
        return self._call(
            lambda conn: self._records.list_records(conn, listing, now=self.clock.now())
        )

    def stats(self) -> StoreStats:
        """Return counts of live records."""
        return self._call(lambda conn: self._records.stats(conn, now=self.clock.now()))

    def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Poll with backoff until the record settles or `timeout` passes (B15); a completion
        through this store object wakes the waiter at once."""
        return poll_until_settled(self, identity, timeout, wakeups=self._wakeups)

    def close(self) -> None:
        """Close the pool's connections; the store cannot be used afterwards."""
        self._pool.close()

    def _call(
        self, work: Work[T], *, ready: bool = True, within: float | None = None
    ) -> T:
        """Run `work` on a pooled connection, the table ready, each reply due `within` seconds
        (default: the reply timeout); run it again after a deadlock (its transaction was rolled
        back whole); driver errors become store errors, and so does a connection of another
        event loop (`stores/_home.py`)."""
        with unusable_here("MySQL"):
            return self._attempts(work, ready=ready, within=within)

    def _attempts(self, work: Work[T], *, ready: bool, within: float | None) -> T:
        """Run `work` as `_call` says, up to `_ATTEMPTS` times, `within` seconds in all if given
        (a renewal's bound, B16: its wait for a connection included)."""
        deadline = None if within is None else monotonic() + within
        for attempt in range(1, _ATTEMPTS + 1):
            with translate_errors():
                conn = self._pool.getconn(left_until(deadline))
            try:
                if ready and not self._schema_ready:
                    self._ready(conn)
                result = self._pool.run(work, conn, left_until(deadline))
            except pymysql.MySQLError as error:
                self._after_error(conn, error)
                if deadlocked(error) and attempt < _ATTEMPTS:
                    sleep(random.uniform(0, _PAUSE * 2**attempt))  # noqa: S311 - jitter
                    continue
                raise store_error(error) from error
            except FencedError:
                self._pool.putconn(conn, reusable=True)  # a clean answer, not a failure
                raise
            except BaseException:
                # Cancelled (or worse) mid-statement: the connection's state is unknown.
                self._pool.putconn(conn, reusable=False)
                raise
            self._pool.putconn(conn, reusable=True)
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _ready(self, conn: pymysql.Connection) -> None:
        """Make sure the table exists, once. Creating needs the CREATE privilege even when the
        table exists, so only try when it, or a column this version added, is missing."""
        if not self._records.exists(conn):
            self._records.create_schema(conn)
        self._schema_ready = True

    def _after_error(self, conn: pymysql.Connection, error: BaseException) -> None:
        """Give `conn` back after `error`: rolled back (a lock wait timeout leaves a batch's
        transaction open), or closed if it is broken or will not roll back; if it was lost,
        with the idle ones (`close_idle`)."""
        reusable = False
        lost = connection_lost(error)
        try:
            if not lost:
                conn.rollback()
                reusable = True
        except pymysql.MySQLError:
            pass
        finally:
            self._pool.putconn(conn, reusable=reusable)
            if lost:
                self._pool.close_idle()
