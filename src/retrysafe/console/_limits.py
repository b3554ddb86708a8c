"""What the console bounds: how much of a POST body it reads (MAX_BODY) and for how long
(BODY_SECONDS), and how often the overview scans the store (`SummaryCache`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import anyio
from starlette.requests import Request

from retrysafe._clock import Clock
from retrysafe.console._data import ConsoleError

__all__ = ["BODY_SECONDS", "MAX_BODY", "SUMMARY_SECONDS", "SummaryCache", "read_body"]

MAX_BODY: Final = 64 * 1024
"""Bytes of a POST body (a page's form, an API call's JSON) read at most: past it, 413."""
BODY_SECONDS: Final = 30.0
"""Seconds a POST body has to arrive in full: past them, 408."""
SUMMARY_SECONDS: Final = 5.0
"""Seconds an overview is shown again before the store is scanned anew (at least as long as
it took to make: on Redis that is a scan of every record)."""

Data = dict[str, object]


async def read_body(request: Request) -> bytes:
    """Return the request's body, read no further than MAX_BODY bytes.

    Raises:
        ConsoleError: 413 when its Content-Length, or the bytes received, pass MAX_BODY (the
            rest is never read); 408 when it is not all there within BODY_SECONDS.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _too_large()
    body = bytearray()
    with anyio.move_on_after(BODY_SECONDS) as deadline:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise _too_large()
    if deadline.cancelled_caught:
        raise ConsoleError(408, f"The body did not arrive within {BODY_SECONDS:g} seconds.")
    return bytes(body)


def _too_large() -> ConsoleError:
    return ConsoleError(413, f"The body is over {MAX_BODY} bytes: the console reads no more.")


class SummaryCache:
    """The overview, made by one request at a time and shown again for SUMMARY_SECONDS, or for
    as long as it took to make if that is longer, so that reloads and tabs do not each scan
    the store; forgotten when this console deletes or purges.

    Args:
        clock: the time it is kept by (the store's clock).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = anyio.Lock()
        self._kept: Data | None = None
        self._until = 0.0

    async def get(self, make: Callable[[], Awaitable[Data]]) -> Data:
        """Return the kept overview, or the one `make` returns now (kept in turn)."""
        async with self._lock:
            started = self.clock.now()
            if self._kept is None or not started < self._until:
                made = await make()
                ended = self.clock.now()
                self._kept, self._until = made, ended + max(SUMMARY_SECONDS, ended - started)
            return self._kept

    def forget(self) -> None:
        """Make the next overview anew: the store changed."""
        self._kept = None
