"""Clocks: time is injected so leases and retention can be tested without sleeping.

Also the bounds every face puts on a lease, a retention and a wait (`check_durations`), and the
doubling wait of a retry loop (`doubled`).
"""

from __future__ import annotations

import threading
import time
from typing import Final, Protocol

from retrysafe._errors import ConfigurationError

__all__ = [
    "MAX_DURATION",
    "Clock",
    "ManualClock",
    "SteadyClock",
    "SystemClock",
    "check_durations",
    "doubled",
]

MAX_DURATION: Final = 3_155_760_000.0
"""The longest lease, retention or wait accepted: 100 years of 365.25 days. Nothing needs
longer, and within it every time a store computes (now plus a retention) is a date the CLI and
the console can show."""

_monotonic = time.monotonic


class Clock(Protocol):
    """Wall-clock seconds since the epoch, shared by every process that uses one store."""

    def now(self) -> float:
        """Return the current time in seconds since the epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        """Return `time.time()`."""
        return time.time()


class SteadyClock:
    """The wall clock read once, then advanced by the monotonic clock: a step of the wall clock
    (an NTP step, a VM's clock sync) moves neither a lease's end nor a retention's.

    Only for a store that one process holds (the memory store): processes that share a store
    must share wall time, and each of them reads its own.
    """

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()

    def now(self) -> float:
        """Return the seconds since the epoch at construction plus those elapsed since."""
        return self._offset + _monotonic()


class ManualClock:
    """A clock that moves only when told to, for tests and simulations.

    Args:
        start: the initial time in seconds since the epoch.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the current manual time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += seconds


def check_durations(
    lease: float, retention: float, wait: float = 0.0, *, wait_name: str = "wait"
) -> None:
    """Refuse a lease or a retention that is not positive, a wait that is negative, or any of
    them not finite or longer than `MAX_DURATION`, before any I/O."""
    if not (
        0 < lease <= MAX_DURATION and 0 < retention <= MAX_DURATION and 0 <= wait <= MAX_DURATION
    ):
        raise ConfigurationError(
            f"lease and retention must be positive and {wait_name} not negative, all finite and"
            f" at most {MAX_DURATION:.0f} s (100 years)."
        )


def doubled(initial: float, times: int, ceiling: float) -> float:
    """Return `initial` doubled `times` times, at most `ceiling`, however large `times` is."""
    return min(initial * 2.0 ** min(times, 1023), ceiling)  # 2.0 ** 1024 overflows
