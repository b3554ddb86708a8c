"""What `assert_runs_once` counts and reports: the counter, the request, the report."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = ["HTTPRequest", "RunCount", "RunCounter", "RunsOnceReport", "read_runs"]


class RunCounter:
    """A thread-safe count of how many times an effect ran.

    Call `increment()` where the effect happens (the charge, the email, the insert) and pass the
    counter as `runs=` to `assert_runs_once`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def increment(self) -> None:
        """Count one run of the effect."""
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        """How many times the effect ran so far."""
        with self._lock:
            return self._count

    def __repr__(self) -> str:
        return f"RunCounter(count={self.count})"


RunCount = RunCounter | Callable[[], int]
"""How `assert_runs_once` reads the number of runs: a `RunCounter`, or a function returning it
(`lambda: len(charges)`, a `SELECT count(*)`...). Only the increase during the check counts."""


def read_runs(runs: RunCount) -> int:
    """Return the current count from a `RunCounter` or a function returning an int."""
    value = runs.count if isinstance(runs, RunCounter) else runs()
    if not isinstance(value, int):
        raise TypeError(f"runs= must report an int, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """The HTTP request `assert_runs_once` sends to an ASGI or WSGI app, every time with one key.

    Args:
        method: the HTTP method, such as "POST".
        path: the path and query, such as "/payments".
        json: a body sent as JSON (or None).
        content: raw body bytes, instead of `json`.
        headers: more request headers (the key header is added).
        key: the idempotency key every duplicate carries; None: a fresh random one per check.
        key_header: the header the key travels in.
    """

    method: str
    path: str
    json: object = None
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    key: str | None = None
    key_header: str = "Idempotency-Key"


UNFINISHED: Final = "did not finish in time"
"""The outcome of a duplicate still running when the timeout ended."""


@dataclass(frozen=True, slots=True)
class RunsOnceReport:
    """What happened when `assert_runs_once` fired its duplicates.

    `outcomes` has one entry per duplicate, in the order they were started: an HTTP status
    (`"201"`, `"201 replayed"` when the answer carried `Idempotent-Replayed: true`, `"409"`),
    `"returned"` for a function that returned, or `"raised NAME: message"`.
    """

    target: str
    duplicates: int
    runs: int
    outcomes: tuple[str, ...]
    key: str | None = None

    @property
    def unfinished(self) -> int:
        """How many duplicates did not finish within the timeout: their effect may run yet."""
        return self.outcomes.count(UNFINISHED)

    @property
    def ok(self) -> bool:
        """Whether the effect ran exactly once, every duplicate having finished (one still
        running could run it again after the count was read)."""
        return self.runs == 1 and not self.unfinished

    def summary(self) -> str:
        """The outcomes seen, each with how many duplicates got it: `201 x1, 201 replayed x7`."""
        return ", ".join(f"{outcome} x{n}" for outcome, n in sorted(Counter(self.outcomes).items()))

    def explain(self) -> str:
        """The one-paragraph failure report: runs counted, outcomes seen."""
        times = "once" if self.runs == 1 else f"{self.runs} times"
        keyed = "" if self.key is None else f" with key {self.key!r}"
        ran = f"{self.target}: the effect ran {times} for {self.duplicates} concurrent duplicates"
        if self.runs == 1 and self.unfinished:
            return (
                f"{ran}{keyed} so far, but {self.unfinished} did not finish within the timeout "
                f"and may run it again: raise timeout=. Outcomes seen: {self.summary()}."
            )
        return f"{ran}{keyed}, not exactly once. Outcomes seen: {self.summary()}."
