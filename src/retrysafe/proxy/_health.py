"""`StoreWatch`: whether the proxy's store answers, and one log line when that changes.

It learns from two sources: its own checks (at start, and for each `GET /healthz`: a `get` of a
record that is never written, bounded in time), and, as an observer of the middleware, every
store call that requests make. The proxy fails closed while the store is down (503
`store-unavailable` to keyed requests); the watch says so once, not once per request:

    WARNING retrysafe.proxy: The idempotency store is failing (StoreUnavailableError: ...) ...
    INFO retrysafe.proxy: The idempotency store answers again after 12.3 s; 42 requests ...

A store that flaps (a memory store at its record cap fails new keys and answers replays) logs
at most one outage per `hold` seconds, each followed by its recovery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

import anyio

from retrysafe._errors import StoreError
from retrysafe._record import Identity
from retrysafe.observe import Observer, Operation, StoreCall
from retrysafe.stores.base import AsyncStore

__all__ = ["CHECK_SECONDS", "PROXY_LOGGER", "StoreWatch", "one_line"]

PROXY_LOGGER: Final = logging.getLogger("retrysafe.proxy")
CHECK_SECONDS: Final = 2.0
"""How long a check waits for the store (`GET /healthz`, and at start)."""
_HOLD_SECONDS: Final = 60.0
_CHECKED: Final = Identity("retrysafe.internal", "-", "health")  # read, never written
_FAILING: Final = "keyed requests get 503 store-unavailable until it answers"
_LONGEST_REASON: Final = 300


def one_line(error: BaseException) -> str:
    """Return `error` as `Type: first line of its message`, at most a few hundred characters."""
    text = " ".join(str(error).strip().split("\n")[0].split())
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return line if len(line) <= _LONGEST_REASON else line[: _LONGEST_REASON - 3] + "..."


class StoreWatch(Observer):
    """Knows whether the store answers; logs an outage and its recovery once each.

    Args:
        store: the proxy's store.
        logger: where the lines go (default `retrysafe.proxy`).
        check_seconds: how long a check waits for the store.
        hold: the least time between two outage lines, in seconds (a flapping store).
        clock: monotonic seconds (for tests).
    """

    def __init__(
        self,
        store: AsyncStore,
        *,
        logger: logging.Logger = PROXY_LOGGER,
        check_seconds: float = CHECK_SECONDS,
        hold: float = _HOLD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.logger = logger
        self.check_seconds = check_seconds
        self._hold = hold
        self._clock = clock
        self._lock = threading.Lock()  # observers may be called from worker threads
        self.up = True
        """Whether the last thing the watch heard from the store was an answer."""
        self._reported: float | None = None  # when the outage in progress was logged
        self._last_report = -hold  # when the last outage line was logged
        self._refused = 0  # requests answered 503 since the outage line

    async def check(self) -> str | None:
        """Call the store once, within `check_seconds`; return None if it answered, else why
        not, on one line."""
        reason = await self._call()
        if reason is None:
            self._answered()
        else:
            self._failed(reason)
        return reason

    async def check_at_start(self) -> None:
        """Check the store and say in one line whether it answers (the proxy starts anyway);
        if not, that line is the outage's, and its recovery is logged."""
        began = time.perf_counter()
        reason = await self._call()
        if reason is None:
            milliseconds = (time.perf_counter() - began) * 1000
            self.logger.info("The idempotency store answers (%.1f ms).", milliseconds)
            return
        with self._lock:
            self.up = False
            self._reported = self._last_report = self._clock()
            self._refused = 0
        self.logger.warning(
            "The idempotency store is unreachable at start (%s): the proxy serves anyway; %s.",
            reason,
            _FAILING,
        )

    async def _call(self) -> str | None:
        try:
            with anyio.fail_after(self.check_seconds):
                await self.store.get(_CHECKED)
        except TimeoutError:
            return f"no answer within {self.check_seconds:g} s"
        except Exception as error:  # whatever the driver raised: the store did not answer
            return one_line(error)
        return None

    def store_call(self, operation: Operation | None, call: StoreCall) -> None:
        """Learn from a store call a request made: it answered, or the store failed."""
        if call.error is None:
            self._answered()
        elif isinstance(call.error, StoreError):
            self._failed(one_line(call.error))

    def decided(self, operation: Operation) -> None:
        """Count a request refused because the store failed (some such failures, like
        loading the scope secret, are not observed store calls)."""
        if operation.decision == "unavailable":
            self._failed(None)
            with self._lock:
                self._refused += 1

    def _failed(self, reason: str | None) -> None:
        with self._lock:
            if self._reported is not None:
                return
            self.up = False
            now = self._clock()
            if now - self._last_report < self._hold:
                return  # a flap soon after the last outage line: silent
            self._reported = self._last_report = now
            self._refused = 0
        why = f" ({reason})" if reason else ""
        self.logger.warning("The idempotency store is failing%s: %s again.", why, _FAILING)

    def _answered(self) -> None:
        with self._lock:
            if self.up:
                return
            self.up = True
            reported, self._reported = self._reported, None
            refused = self._refused
            if reported is None:
                return  # the outage was not logged (a flap, or the start line said it)
            seconds = self._clock() - reported
        self.logger.info(
            "The idempotency store answers again after %.1f s; %d %s got 503 meanwhile.",
            seconds,
            refused,
            "request" if refused == 1 else "requests",
        )
