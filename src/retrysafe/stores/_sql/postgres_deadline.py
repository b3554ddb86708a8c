"""The PostgreSQL store's `read_timeout`: a server or network that stalls mid-statement fails the
call instead of holding it, and its caller, for ever.

libpq has no read timeout, and cancelling a psycopg call does not help: psycopg then asks the
server to cancel and waits for the answer, on the same stalled network. So when a statement's
reply is late, its connection's socket is shut down under it: the wait for the reply ends at
once, psycopg raises a lost connection, the store raises `StoreUnavailableError` (the statement
may or may not have run, as with any lost reply), and the pool drops the broken connection.

`AsyncReadDeadline` arms a timer on the event loop, `ReadDeadline` (the sync face's twin, named
so that the generated sync store finds it) a watchdog thread of the store's own. Either way,
`arm(conn)` before a statement and `disarm(armed)` after it, before the connection is given back:
once `disarm` returns, no cut can come, so a connection is never cut under its next user. A
renewal is armed `within` a bound of its own, shorter (`stores/_sql.renewal_timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import threading
from collections import OrderedDict
from typing import Any

from retrysafe._concurrency import monotonic
from retrysafe._errors import StoreUnavailableError

__all__ = ["Armed", "AsyncReadDeadline", "ReadDeadline", "late", "unavailable"]


class Armed:
    """One armed statement: its connection's socket, when it is due, and whether it was cut."""

    __slots__ = ("at", "cut", "fd", "handle")

    def __init__(self, fd: int, at: float) -> None:
        self.fd = fd
        self.at = at
        self.cut = False
        self.handle: asyncio.TimerHandle | None = None

    def fire(self) -> None:
        """Shut the socket down under the statement (on a duplicate of its descriptor, so the
        connection still owns, and closes, its own)."""
        self.cut = True
        # OSError: closed meanwhile, so nothing is waiting on it.
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self.fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


def late(timeout: float, *, renewal: bool = False) -> str:
    """Say that a statement's reply did not come within `timeout` seconds (`renewal`: the bound
    of a renewal, `renewal_timeout`)."""
    if renewal:
        return (
            f"no reply to the renewal within {timeout:g} s (read_timeout, or a sixth of the "
            "lease if shorter; the statement may or may not have run)"
        )
    return f"no reply within read_timeout={timeout:g} s (the statement may or may not have run)"


def unavailable(timeout: float, *, renewal: bool = False) -> StoreUnavailableError:
    """Return the error of a call whose statement's reply did not come within `timeout`."""
    return StoreUnavailableError(f"PostgreSQL is unavailable: {late(timeout, renewal=renewal)}")


class AsyncReadDeadline:
    """Cut a statement's connection `timeout` seconds after `arm` (async face: a loop timer).

    Args:
        timeout: seconds a statement may wait for its reply.
    """

    __slots__ = ("timeout",)

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def arm(self, conn: Any, *, extra: float = 0.0, within: float | None = None) -> Armed:
        """Start the clock on a statement about to run on `conn` (`extra`: seconds it may
        legitimately wait besides, a LISTEN's, say; `within`: seconds instead of `timeout`)."""
        loop = asyncio.get_running_loop()
        timeout = self.timeout if within is None else within
        armed = Armed(conn.pgconn.socket, loop.time() + timeout + extra)
        armed.handle = loop.call_at(armed.at, armed.fire)
        return armed

    @staticmethod
    def disarm(armed: Armed) -> bool:
        """Stop the clock; return whether the statement was cut."""
        if armed.handle is not None:
            armed.handle.cancel()
        return armed.cut

    def close(self) -> None:
        """Nothing to stop: the timers belong to the loop."""


class ReadDeadline:
    """Cut a statement's connection `timeout` seconds after `arm` (sync face: one watchdog
    thread per store, started on first use; statements armed alike are due in the order they
    were armed, so the watchdog looks at the first of them and at the few others: waits,
    renewals).

    Args:
        timeout: seconds a statement may wait for its reply.
    """

    __slots__ = ("_armed", "_closed", "_due", "_sleeping_until", "_thread", "_waits", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._armed: OrderedDict[Armed, None] = OrderedDict()  # in the order they are due
        self._waits: dict[Armed, None] = {}  # armed otherwise: due whenever (a few at most)
        self._due = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._sleeping_until = math.inf  # when the watchdog looks again, unless woken

    def arm(self, conn: Any, *, extra: float = 0.0, within: float | None = None) -> Armed:
        """Start the clock on a statement about to run on `conn` (see `AsyncReadDeadline`)."""
        timeout = self.timeout if within is None else within
        armed = Armed(conn.pgconn.socket, monotonic() + timeout + extra)
        with self._due:
            # Armed alike (`timeout`), statements are due in order; the others whenever.
            (self._armed if timeout == self.timeout and not extra else self._waits)[armed] = None
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="retrysafe-postgres-read-timeout", daemon=True
                )
                self._thread.start()
            elif armed.at < self._sleeping_until:  # sooner than the watchdog would look again
                self._due.notify()
        return armed

    def disarm(self, armed: Armed) -> bool:
        """Stop the clock; return whether the statement was cut. No cut comes after this."""
        with self._due:
            self._armed.pop(armed, None)
            self._waits.pop(armed, None)
        return armed.cut

    def close(self) -> None:
        """Stop the watchdog."""
        with self._due:
            self._closed = True
            self._due.notify()

    def _watch(self) -> None:
        with self._due:
            while not self._closed:
                first = self._first()
                if first is None:
                    self._sleeping_until = math.inf
                    self._due.wait()
                    continue
                self._sleeping_until = first.at
                delay = first.at - monotonic()
                if delay > 0:
                    self._due.wait(delay)
                    continue
                self._armed.pop(first, None)
                self._waits.pop(first, None)
                first.fire()

    def _first(self) -> Armed | None:
        """Return the armed statement due first: the first of those armed alike, or a wait."""
        first = next(iter(self._armed), None)
        for wait in self._waits:
            if first is None or wait.at < first.at:
                first = wait
        return first
