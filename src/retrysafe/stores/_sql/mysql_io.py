"""What the two faces of the MySQL store do differently, written by hand side by side.

The MySQL store's async modules (`stores/_async/mysql*.py`) are the source of the sync ones,
which `scripts/unasync.py` generates; what cannot be generated lives here as a pair, the async
class named `Async...` so the generated code names its twin: opening and closing a connection
(aiomysql takes `db=`, PyMySQL `database=` and a flag for several statements a query; aiomysql
closes with `ensure_closed()`). `AsyncWork` and `Work` type what the store runs on a lent
connection. aiomysql is imported when the async face first connects (PyMySQL, whose errors
both faces raise, comes with this module). A server that accepts a connection and never
greets fails within `connect_timeout` on both faces, and one that stalls mid-statement fails
within the reply timeout (`MySQLOptions.reply_timeout`, `run`), or a shorter bound the caller
gives (`within`: a renewal's, `stores/_sql.renewal_timeout`, which bounds its wait for a
connection too: `left_until`). The pool's gate and the wake-ups of waiters, which are not about
MySQL, are `retrysafe/_concurrency.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import anyio
import pymysql  # type: ignore[import-untyped]  # mysql_connection's already

from retrysafe._concurrency import monotonic
from retrysafe._errors import StoreUnavailableError
from retrysafe.stores._sql.mysql_connection import MySQLOptions

__all__ = ["AsyncMySQLDriver", "AsyncWork", "MySQLDriver", "T", "Work", "left_until"]

T = TypeVar("T")

AsyncWork: TypeAlias = Callable[[Any], Awaitable[T]]
"""A primitive run on a lent connection (async face)."""
Work: TypeAlias = Callable[[Any], T]
"""A primitive run on a lent connection (sync face)."""


# The client error for a connection lost mid-exchange (PyMySQL's CR.CR_SERVER_LOST).
CR_SERVER_LOST = 2013


def left_until(deadline: float | None) -> float | None:
    """Return the seconds left of a renewal's bound, until `deadline` (monotonic; None: no
    bound, None returned); raise StoreUnavailableError if none are."""
    if deadline is None:
        return None
    left = deadline - monotonic()
    if left <= 0:
        raise StoreUnavailableError(
            "MySQL is unavailable: no reply to the renewal in time (read_timeout, or a sixth "
            "of the lease if shorter)"
        )
    return left


def _connect_arguments(options: MySQLOptions, within: float | None) -> dict[str, Any]:
    """Return what both drivers' `connect` take alike: the server and the login, the connect
    timeout (`within` if shorter), utf8mb4, autocommit; the database, TLS and several
    statements a query each driver takes its way."""
    timeout = options.connect_timeout if within is None else min(options.connect_timeout, within)
    return {
        "host": options.host,
        "port": options.port,
        "user": options.user,
        "password": options.password,
        "connect_timeout": timeout,
        "charset": "utf8mb4",
        "autocommit": True,
    }


class AsyncMySQLDriver:
    """Opens and closes the async store's connections, with aiomysql.

    Connections are in autocommit, take several statements in one query (aiomysql always
    allows it), report changed rows (not found rows) and talk utf8mb4.
    """

    def __init__(self, options: MySQLOptions) -> None:
        self._options = options
        self._ssl = options.ssl_context()

    async def connect(self, within: float | None = None) -> Any:
        """Open a connection within `connect_timeout`, or `within` seconds if that is shorter
        (the caller runs the session set-up on it)."""
        import aiomysql  # type: ignore[import-untyped]  # noqa: PLC0415 - the async face only

        arguments = _connect_arguments(self._options, within)
        timeout = arguments["connect_timeout"]
        # aiomysql bounds only the TCP connect: a server that accepts and never greets (another
        # service's port, a stuck proxy) would hold the handshake, and the caller, forever.
        try:
            with anyio.fail_after(timeout):
                return await aiomysql.connect(**arguments, db=self._options.database, ssl=self._ssl)
        except TimeoutError:
            raise pymysql.OperationalError(
                CR_SERVER_LOST, f"No handshake from the MySQL server within {timeout:g} s"
            ) from None

    async def run(self, work: AsyncWork[T], conn: Any, within: float | None = None) -> T:
        """Run `work` on `conn`; past `within` seconds (default: the reply timeout), close
        `conn` under it (it is mid-exchange: what the server sends next belongs to no one), so
        that its read fails and the call raises a lost connection (2013). aiomysql has no read
        timeout; a timer that closes the connection costs a third of a cancel scope (every call
        pays it)."""
        timeout = self._options.reply_timeout if within is None else within
        loop = asyncio.get_running_loop()
        late: list[bool] = []
        timer = loop.call_at(loop.time() + timeout, _cut, conn, late)
        try:
            return await work(conn)
        except Exception as error:  # whatever the closed connection made aiomysql raise
            if late:
                bound = f"read_timeout={timeout:g} s" if within is None else f"{timeout:g} s"
                raise pymysql.OperationalError(
                    CR_SERVER_LOST, f"No reply from the MySQL server within {bound}"
                ) from error
            raise
        finally:
            timer.cancel()

    async def close(self, conn: Any) -> None:
        """Say goodbye and close `conn`; a broken one is just closed. Raises nothing but a
        cancellation, and closes the socket even then."""
        with contextlib.suppress(Exception):  # broken already: closing is all that is left
            try:
                await conn.ensure_closed()
            finally:
                conn.close()  # nothing to do once closed; a cancelled goodbye still closes

    @staticmethod
    def is_open(conn: Any) -> bool:
        """Return whether `conn` still has its socket."""
        return not conn.closed


def _cut(conn: Any, late: list[bool]) -> None:
    """Close a connection whose reply is late (its pending read then fails)."""
    late.append(True)
    conn.close()


class MySQLDriver:
    """Opens and closes the sync store's connections, with PyMySQL (as `AsyncMySQLDriver`).

    TLS only when the URL asks for it, as on the async face (PyMySQL would otherwise try it
    unverified).
    """

    def __init__(self, options: MySQLOptions) -> None:
        self._options = options
        self._ssl = options.ssl_context()

    def connect(self, within: float | None = None) -> Any:
        """Open a connection (see `AsyncMySQLDriver.connect`)."""
        options = self._options
        arguments = _connect_arguments(options, within)
        tls: dict[str, Any] = {"ssl_disabled": True} if self._ssl is None else {"ssl": self._ssl}
        # PyMySQL's connect_timeout bounds only the TCP connect: the handshake's reads and writes
        # get the same bound here, so a server that accepts and never greets fails in time
        # (2013, lost connection). PyMySQL applies its timeouts on each read and write, so
        # setting them afterwards bounds each statement's by the reply timeout (`read_timeout`,
        # by default 30 s more than the lock wait a statement may have to sit through).
        conn = pymysql.connect(
            **arguments,
            database=options.database,
            client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
            read_timeout=arguments["connect_timeout"],
            write_timeout=arguments["connect_timeout"],
            **tls,
        )
        conn._read_timeout = conn._write_timeout = options.reply_timeout  # private; see above
        return conn

    def run(self, work: Work[T], conn: Any, within: float | None = None) -> T:
        """Run `work` on `conn`, each read within `within` seconds (default: the reply timeout;
        PyMySQL bounds each read itself, closes the connection and raises a lost connection,
        2013)."""
        if within is None:
            return work(conn)
        conn._read_timeout = within  # private, as in `connect`
        try:
            return work(conn)
        finally:
            conn._read_timeout = self._options.reply_timeout

    def close(self, conn: Any) -> None:
        """Say goodbye and close `conn`; a broken one is just dropped. Never raises."""
        with contextlib.suppress(Exception):  # closed already: nothing is left to do
            conn.close()

    @staticmethod
    def is_open(conn: Any) -> bool:
        """Return whether `conn` still has its socket."""
        return bool(conn.open)
