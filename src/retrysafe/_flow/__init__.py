"""The one flow of every face: admit (claim, wait, decide), run under a lease, then finish.

Every face (ASGI and WSGI middleware, `@idempotent`, queue consumers, the proxy) drives the
same three steps; only how it answers differs (a response, a return value, an exception).

    admission.py  sans-I/O: `admission()` yields ClaimStep / WaitStep, is sent the store's
                  answers, and returns an Admission: execute | replay | mismatch | in flight
                  (B13-B15); `judge()` is its first step alone, for transactional mode
    drivers.py    `SyncFlow` drives it with a sync store, `AsyncFlow` with an async one
    executions.py their `execution()`: the operation under a renewed lease (B16), finished by
                  completing the outcome (B18) or releasing the claim (B28)
    counters.py   what the flow counts (`Count`, `Counters`) and how store failures are
                  logged (`Finisher`)
    holding.py    outcomes the store did not take (B19): held in the process, answering
                  duplicates, their lease renewed and their completion retried until it lands;
                  `drain` / `adrain` wait for them at shutdown (B40)

The decision itself is `retrysafe._engine.decide`, pure. What to count is `Count`; what each
face counts is read from `Counters` (`middleware.counters`).
"""

from __future__ import annotations

from retrysafe._flow.admission import (
    CLAIM_RETRIES,
    DEFAULT_LEASE,
    DEFAULT_RETENTION,
    DEFAULT_WAIT,
    IN_FLIGHT_RETRY_AFTER,
    Admission,
    ClaimStep,
    Terms,
    WaitStep,
    admission,
    judge,
)
from retrysafe._flow.counters import Count, Counters
from retrysafe._flow.drivers import AsyncFlow, SyncFlow
from retrysafe._flow.executions import AsyncExecution, SyncExecution
from retrysafe._flow.holding import DEFAULT_DRAIN, Holdings

__all__ = [
    "CLAIM_RETRIES",
    "DEFAULT_DRAIN",
    "DEFAULT_LEASE",
    "DEFAULT_RETENTION",
    "DEFAULT_WAIT",
    "IN_FLIGHT_RETRY_AFTER",
    "Admission",
    "AsyncExecution",
    "AsyncFlow",
    "ClaimStep",
    "Count",
    "Counters",
    "Holdings",
    "SyncExecution",
    "SyncFlow",
    "Terms",
    "WaitStep",
    "admission",
    "judge",
]
