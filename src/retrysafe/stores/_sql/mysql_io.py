"""What the two faces of the MySQL store do differently, written by hand side by side.

The MySQL store's async modules (`stores/_async/mysql*.py`) are the source of the sync ones,
which `scripts/unasync.py` generates; what cannot be generated lives here as a pair, the async
class named `Async...` so the generated code names its twin: opening and closing a connection
(aiomysql takes `db=`, PyMySQL `database=`; aiomysql closes with `ensure_closed()`), a gate that
bounds the pool's connections (an anyio semaphore, a threading one), and the wake-ups of
waiters in this process (anyio events, threading events). `AsyncWork` and `Work` type what the
store runs on a lent connection. Neither face's driver is imported before it is used.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import anyio

from retrysafe.stores._sql.mysql_connection import MySQLOptions

__all__ = [
    "AsyncGate",
    "AsyncMySQLDriver",
    "AsyncWakeups",
    "AsyncWork",
    "Gate",
    "MySQLDriver",
    "Wakeups",
    "Work",
]

T = TypeVar("T")

AsyncWork: TypeAlias = Callable[[Any], Awaitable[T]]
"""A primitive run on a lent connection (async face)."""
Work: TypeAlias = Callable[[Any], T]
"""A primitive run on a lent connection (sync face)."""


class AsyncMySQLDriver:
    """Opens and closes the async store's connections, with aiomysql.

    Connections are in autocommit, take several statements in one query (aiomysql always
    allows it), report changed rows (not found rows) and talk utf8mb4.
    """

    def __init__(self, options: MySQLOptions) -> None:
        self._options = options
        self._ssl = options.ssl_context()

    async def connect(self) -> Any:
        """Open a connection (the caller runs the session set-up on it)."""
        import aiomysql  # type: ignore[import-untyped]  # noqa: PLC0415 - the async face only

        options = self._options
        return await aiomysql.connect(
            host=options.host,
            port=options.port,
            user=options.user,
            password=options.password,
            db=options.database,
            connect_timeout=options.connect_timeout,
            charset="utf8mb4",
            autocommit=True,
            ssl=self._ssl,
        )

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


class MySQLDriver:
    """Opens and closes the sync store's connections, with PyMySQL (as `AsyncMySQLDriver`).

    TLS only when the URL asks for it, as on the async face (PyMySQL would otherwise try it
    unverified).
    """

    def __init__(self, options: MySQLOptions) -> None:
        self._options = options
        self._ssl = options.ssl_context()

    def connect(self) -> Any:
        """Open a connection (the caller runs the session set-up on it)."""
        import pymysql  # type: ignore[import-untyped]  # noqa: PLC0415

        options = self._options
        tls: dict[str, Any] = {"ssl_disabled": True} if self._ssl is None else {"ssl": self._ssl}
        return pymysql.connect(
            host=options.host,
            port=options.port,
            user=options.user,
            password=options.password,
            database=options.database,
            connect_timeout=options.connect_timeout,
            charset="utf8mb4",
            autocommit=True,
            client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
            **tls,
        )

    def close(self, conn: Any) -> None:
        """Say goodbye and close `conn`; a broken one is just dropped. Never raises."""
        with contextlib.suppress(Exception):  # closed already: nothing is left to do
            conn.close()

    @staticmethod
    def is_open(conn: Any) -> bool:
        """Return whether `conn` still has its socket."""
        return bool(conn.open)


class AsyncGate:
    """At most `size` holders at once; entering waits up to a timeout (async face)."""

    def __init__(self, size: int) -> None:
        self._semaphore = anyio.Semaphore(size)

    async def enter(self, timeout: float) -> bool:
        """Take a place, waiting at most `timeout` seconds; return whether one was taken."""
        with anyio.move_on_after(timeout):
            await self._semaphore.acquire()
            return True
        return False

    def leave(self) -> None:
        """Give a place back."""
        self._semaphore.release()


class Gate:
    """At most `size` holders at once, across threads (sync face, as `AsyncGate`)."""

    def __init__(self, size: int) -> None:
        self._semaphore = threading.BoundedSemaphore(size)

    def enter(self, timeout: float) -> bool:
        """Take a place, waiting at most `timeout` seconds; return whether one was taken."""
        return self._semaphore.acquire(timeout=timeout)

    def leave(self) -> None:
        """Give a place back."""
        self._semaphore.release()


class AsyncWakeups:
    """Waiters of this process on records, woken when this process settles one (async face).

    A waiter `watch`es a record before it reads it, so a completion right after the read wakes
    it; one in another process is seen by its next poll.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, set[anyio.Event]] = {}

    def watch(self, record_id: str) -> anyio.Event:
        """Return an event set when record `record_id` settles here."""
        event = anyio.Event()
        self._waiting.setdefault(record_id, set()).add(event)
        return event

    def unwatch(self, record_id: str, event: anyio.Event) -> None:
        """Stop watching."""
        events = self._waiting.get(record_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiting[record_id]

    def wake(self, record_id: str) -> None:
        """Wake every waiter on record `record_id` (cheap when there is none)."""
        for event in self._waiting.pop(record_id, ()):
            event.set()

    @staticmethod
    async def until(event: anyio.Event, seconds: float) -> None:
        """Wait for `event`, at most `seconds`."""
        with anyio.move_on_after(seconds):
            await event.wait()


class Wakeups:
    """Waiters of this process on records, across threads (sync face, as `AsyncWakeups`)."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()

    def watch(self, record_id: str) -> threading.Event:
        """Return an event set when record `record_id` settles here."""
        event = threading.Event()
        with self._lock:
            self._waiting.setdefault(record_id, set()).add(event)
        return event

    def unwatch(self, record_id: str, event: threading.Event) -> None:
        """Stop watching."""
        with self._lock:
            events = self._waiting.get(record_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[record_id]

    def wake(self, record_id: str) -> None:
        """Wake every waiter on record `record_id` (cheap when there is none)."""
        if not self._waiting:  # no lock for the common case: nobody waits anywhere
            return
        with self._lock:
            events = self._waiting.pop(record_id, ())
        for event in events:
            event.set()

    @staticmethod
    def until(event: threading.Event, seconds: float) -> None:
        """Wait for `event`, at most `seconds`."""
        event.wait(seconds)
