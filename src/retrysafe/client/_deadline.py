"""The total-time bound of a blocking attempt, which socket timeouts alone cannot give (SPEC B33).

A socket timeout bounds each read, not the attempt: a server that trickles its answer (a byte
every fraction of a second) keeps every read within its timeout and holds a blocking attempt
far past `RetryPolicy.timeout`. An async attempt is cancelled at its deadline (anyio); a
blocking call cannot be cancelled, so the sync faces use the two tools here:

- `run_within` runs the attempt on a helper thread and stops waiting for it at the deadline.
  Any transport works this way, whatever it reads from. The abandoned attempt ends on its own
  (its own socket timeouts, or the server) and a response it gets late is discarded (closed),
  never returned.
- `shut_at` shuts an HTTP/1.1 connection down at the deadline, which wakes a read that is
  blocked on it; the httpx transport uses it while the caller's client reads the body.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from functools import partial
from typing import TypeVar

from retrysafe.client._core import _Call

__all__ = ["run_within", "shut_at", "time_ran_out"]

T = TypeVar("T")


def time_ran_out(call: _Call) -> str:
    """Mark `call` cut at its deadline (no attempt follows: SPEC B33) and say so, for its error."""
    call.timed_out = True
    return (
        f"{call.method} {call.url}: the total-time bound of {call.policy.timeout:g}s "
        "(RetryPolicy.timeout) ran out"
    )


def run_within(seconds: float, work: Callable[[], T], discard: Callable[[T], object]) -> T | None:
    """Return what `work` returns, or None if it is still running after `seconds`.

    `work` runs on a helper thread in a copy of the caller's context (so its context
    variables, such as a tracing span, are the caller's); its exception is raised here. When
    the caller stops waiting (the deadline, or an exception such as KeyboardInterrupt), a
    result that comes later is handed to `discard`.
    """
    future: Future[T] = Future()
    context = contextvars.copy_context()

    def run() -> None:
        try:
            result = context.run(work)
        except BaseException as error:  # handed to the caller's thread, whatever it is
            future.set_exception(error)
        else:
            future.set_result(result)

    threading.Thread(target=run, name="retrysafe-client-attempt", daemon=True).start()
    try:
        done, _ = wait([future], timeout=seconds)
    except BaseException:
        future.add_done_callback(partial(_discard_late, discard))
        raise
    if not done:
        future.add_done_callback(partial(_discard_late, discard))
        return None
    return future.result()


def _discard_late(discard: Callable[[T], object], future: Future[T]) -> None:
    if future.exception() is None:
        discard(future.result())


def shut_at(seconds: float, sock: socket.socket) -> Callable[[], None]:
    """Shut `sock` down in `seconds` unless the returned function is called first.

    `shutdown` (not `close`) is what wakes a `recv` blocked in another thread. The socket's
    own class's method is bypassed for TLS: `SSLSocket.shutdown` also drops its TLS state,
    which the blocked reader is still using; the plain one only ends the TCP connection.
    """
    timer = threading.Timer(seconds, _shut, (sock,))
    timer.daemon = True
    timer.start()
    return timer.cancel


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: nothing left to wake
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
