# Generated from stores/_async/mysql_pool.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The MySQL store's connection pool: a few connections lent one primitive at a time.

The async driver has a pool of its own and PyMySQL none, so the store has one, written once
here for both faces. It opens connections on demand up to `pool_max`, keeps the ones given
back for the next caller (last in, first out: the warmest), and bounds the wait for one by
`pool_timeout`, past which the store is unavailable. A connection given back after an error
that may have left it in an unknown state is closed instead. One that sat idle for a while is
pinged before it is lent, so a connection the server dropped meanwhile (a restart, its
`wait_timeout`) is replaced rather than failing the next call. One found lost (a failed ping,
a reply that never came) takes the idle ones with it (`close_idle`). A process forked after using
the pool (gunicorn `--preload`) opens its own connections and never touches its parent's, nor
closes them; the async pool met on another event loop (a second `asyncio.run`) closes the idle
connections of the loop it was last used on and opens new ones (`stores/_home.py`).
The sync face's pool is shared by threads: its idle list only ever pops and appends, which are
atomic, and the gate is a threading semaphore.
"""

from __future__ import annotations

from typing import Any

import pymysql  # type: ignore[import-untyped]

from retrysafe._concurrency import Gate, monotonic
from retrysafe._errors import StoreClosedError, StoreUnavailableError
from retrysafe.stores._home import INHERITED, Home
from retrysafe.stores._sql.mysql_connection import MySQLOptions, session_setup
from retrysafe.stores._sql.mysql_io import MySQLDriver, Work, T, left_until

__all__ = ["MySQLPool"]


class MySQLPool:
    """Connections to one server, at most `pool_max` open at a time.

    Args:
        options: where to connect, and the pool's size and timeout.
    """

    # A connection idle for longer than this is pinged before it is lent.
    check_after: float = 5.0

    def __init__(self, options: MySQLOptions) -> None:
        self._options = options
        self._driver = MySQLDriver(options)
        self._setup = session_setup(options)
        self._gate = Gate(options.pool_max)
        self._idle: list[tuple[pymysql.Connection, float]] = []
        self._home = Home("MySQL")
        self._closed = False

    def getconn(self, within: float | None = None) -> pymysql.Connection:
        """Lend a connection: an idle one, or a new one; driver errors pass through. Given,
        `within` bounds the whole of it (a renewal's, B16): the wait for a free one (else
        `pool_timeout`), an idle one's ping (else the reply timeout), a new one's connection
        (else `connect_timeout`)."""
        self._follow()
        if self._closed:
            raise StoreClosedError("This MySQL store is closed.")
        options = self._options
        wait, deadline = options.pool_timeout, None
        if within is not None:
            wait, deadline = min(wait, within), monotonic() + within
        if not self._gate.enter(wait):
            bound = f"pool_timeout={wait:g}" if deadline is None else f"{wait:g}"
            raise StoreUnavailableError(
                f"No MySQL connection was free within {bound} s (pool_max={options.pool_max})."
            )
        try:
            return self._idle_or_new(deadline)
        except BaseException:
            self._gate.leave()
            raise

    def putconn(self, conn: pymysql.Connection, *, reusable: bool) -> None:
        """Take `conn` back: kept for the next caller if `reusable` and still open, else closed."""
        try:
            if not self._home.here():
                return  # lent before a move (`_move`): never used again, nor closed, here
            if reusable and not self._closed and self._driver.is_open(conn):
                self._idle.append((conn, monotonic()))
            else:
                self._driver.close(conn)
        finally:
            self._gate.leave()

    def run(
        self, work: Work[T], conn: pymysql.Connection, within: float | None = None
    ) -> T:
        """Run `work` on a lent connection, within `read_timeout` or `within` seconds (see the
        driver's `run`)."""
        return self._driver.run(work, conn, within)

    def close_idle(self) -> None:
        """Close the idle connections: one was just found lost, and those idle as long or
        longer most likely are too (a server restart; a network that silently dropped them
        all, a NAT or firewall state expired), each of which would cost a call its wait."""
        while self._idle:
            try:
                conn, _ = self._idle.pop()
            except IndexError:  # another thread took the last one
                break
            self._driver.close(conn)

    def close(self) -> None:
        """Close the idle connections; those lent out are closed as they come back. (In a
        forked child, or on another loop, those of the parent's or of that loop are left.)"""
        self._follow()
        self._closed = True
        self.close_idle()

    def _idle_or_new(self, deadline: float | None) -> pymysql.Connection:
        while self._idle:
            left = left_until(deadline)  # before a connection is taken: it raises
            try:
                conn, since = self._idle.pop()
            except IndexError:
                break
            if monotonic() - since < self.check_after:
                return conn
            try:
                self._driver.run(_ping, conn, left)
            except pymysql.Error:
                self._driver.close(conn)
                self.close_idle()
                break
            return conn
        return self._open(left_until(deadline))

    def _open(self, within: float | None = None) -> pymysql.Connection:
        conn = self._driver.connect(within)
        try:
            cursor = conn.cursor()
            cursor.execute(self._setup)
            while cursor.nextset():
                pass
        except BaseException:
            self._driver.close(conn)
            raise
        return conn

    def _follow(self) -> None:
        """Move the pool here if it was last used on another event loop, or in the parent of
        this forked process (`stores/_home.py`)."""
        forked = self._home.moved()
        if forked is not None:
            try:
                self._move(forked=forked)
            finally:
                self._home.settled()

    def _move(self, *, forked: bool) -> None:
        """Forget the idle connections and the gate of the loop or process the pool was last
        used in: in a forked child, the parent's are kept unused and unclosed (their sockets
        are the parent's); else they are closed (their loop's transports may fail to, but
        each says goodbye to the server and lets go of its socket)."""
        idle, self._idle = self._idle, []
        self._gate = Gate(self._options.pool_max)
        if forked:
            _keep_inherited([conn for conn, _ in idle])
            return
        for conn, _ in idle:
            self._driver.close(conn)


def _ping(conn: pymysql.Connection) -> None:
    """Check that `conn` still answers, without reconnecting."""
    conn.ping(False)


def _keep_inherited(conns: list[Any]) -> None:
    """Keep a forked child's inherited connections, unused and unclosed, for its lifetime. The
    async driver's are also parted from their streams (kept too): its finalizer would close
    them through the parent's event loop, noisily, at the child's exit."""
    for conn in conns:
        writer, reader = getattr(conn, "_writer", None), getattr(conn, "_reader", None)
        INHERITED.keep(conn, writer, reader)
        if writer is not None:
            conn._writer = conn._reader = None
