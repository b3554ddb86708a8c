"""Tools to prove your own handlers, functions and clients retry-safe.

- `assert_runs_once` / `aassert_runs_once`: fire N concurrent duplicates (one idempotency key)
  at an ASGI app, a WSGI app or a function, and fail unless the effect ran exactly once.
- `FaultyTransport` / `AsyncFaultyTransport`: httpx transports that lose responses, time out
  and reset connections, wrapping a real transport, to test a client's retries.
- The pytest plugin (`retrysafe.pytest_plugin`, on when the package is installed) adds fixtures
  for fresh stores of every kind; see docs/testing.md.

The fault transports need httpx (`retrysafe[httpx]`), and so do checks of HTTP apps; they are
imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrysafe._extras import missing_extra
from retrysafe.testing._report import HTTPRequest, RunCount, RunCounter, RunsOnceReport
from retrysafe.testing._runs_once import RunsOnceOptions, aassert_runs_once, assert_runs_once

if TYPE_CHECKING:
    from retrysafe.testing._faults import (
        AsyncFaultyTransport,
        Fault,
        FaultyTransport,
        InjectedFault,
    )

__all__ = [
    "AsyncFaultyTransport",
    "Fault",
    "FaultyTransport",
    "HTTPRequest",
    "InjectedFault",
    "RunCount",
    "RunCounter",
    "RunsOnceOptions",
    "RunsOnceReport",
    "aassert_runs_once",
    "assert_runs_once",
]

_FAULTS = frozenset({"AsyncFaultyTransport", "Fault", "FaultyTransport", "InjectedFault"})


def __getattr__(name: str) -> object:
    if name in _FAULTS:
        try:
            from retrysafe.testing import _faults  # noqa: PLC0415
        except ImportError as error:
            raise missing_extra(f"retrysafe.testing.{name}", "httpx", error) from error
        return getattr(_faults, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
