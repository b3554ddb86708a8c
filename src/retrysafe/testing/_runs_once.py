"""`assert_runs_once`: fire N concurrent duplicates and prove the effect ran exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TypedDict, Unpack

import anyio
import anyio.to_thread

from retrysafe._errors import ConfigurationError
from retrysafe.testing._firing import Interface, Plan, fire_tasks, fire_threads
from retrysafe.testing._report import HTTPRequest, RunCount, RunsOnceReport, read_runs

__all__ = ["RunsOnceOptions", "aassert_runs_once", "assert_runs_once"]


class RunsOnceOptions(TypedDict, total=False):
    """The options of `assert_runs_once` besides the target and `runs`."""

    request: HTTPRequest | None
    args: Sequence[object]
    kwargs: Mapping[str, object] | None
    duplicates: int
    interface: Interface | None
    timeout: float


def _plan(target: object, options: RunsOnceOptions) -> tuple[Plan, float]:
    plan = Plan.make(
        target,
        request=options.get("request"),
        args=options.get("args", ()),
        kwargs=options.get("kwargs"),
        duplicates=options.get("duplicates", 8),
        interface=options.get("interface"),
    )
    return plan, options.get("timeout", 30.0)


def _judge(plan: Plan, runs: int, outcomes: tuple[str, ...]) -> RunsOnceReport:
    __tracebackhide__ = True  # pytest shows the user's call, not this helper
    report = RunsOnceReport(plan.describe(), plan.duplicates, runs, outcomes, plan.key)
    if not report.ok:
        raise AssertionError(report.explain())
    return report


def assert_runs_once(
    target: object,
    *,
    runs: RunCount,
    **options: Unpack[RunsOnceOptions],
) -> RunsOnceReport:
    """Fire `duplicates` concurrent duplicates at `target`; fail unless the effect ran once.

    With `request`, `target` is an ASGI app (an async callable: the duplicates run as tasks of
    one event loop) or a WSGI app (real threads), and every duplicate sends `request` with the
    same idempotency key. Without it, `target` is a function (an `@idempotent` one, say) called
    with `args` and `kwargs`: on threads if it is sync, as tasks if it is async.

    Args:
        target: the ASGI app, WSGI app or function under test.
        runs: how many times the effect ran: a `RunCounter` or a function returning the count.
            Only its increase during the check counts.
        options: `request`, the HTTP request to send (for an app); `args` and `kwargs` of
            every call (for a function); `duplicates`, how many to fire at once (8, at least
            2); `interface`, "asgi", "wsgi" or "function" when guessing from `target` would be
            wrong; `timeout`, seconds the duplicates may take together (30).

    Returns:
        The report (runs counted, one outcome per duplicate), for further assertions.

    Raises:
        AssertionError: the effect ran zero times or more than once; the message lists the
            runs and the outcomes seen.
    """
    __tracebackhide__ = True
    plan, timeout = _plan(target, options)
    before = read_runs(runs)
    if plan.asynchronous:
        _refuse_running_loop()
        outcomes = anyio.run(fire_tasks, plan, timeout)
    else:
        outcomes = fire_threads(plan, timeout)
    return _judge(plan, read_runs(runs) - before, outcomes)


async def aassert_runs_once(
    target: object,
    *,
    runs: RunCount,
    **options: Unpack[RunsOnceOptions],
) -> RunsOnceReport:
    """`assert_runs_once` for async tests: async targets run in the test's own event loop.

    Use it when the app or the store is bound to the running loop (an async test with an
    async store it opened). Sync targets still run on real threads. Arguments as for
    `assert_runs_once`.
    """
    __tracebackhide__ = True
    plan, timeout = _plan(target, options)
    before = read_runs(runs)
    if plan.asynchronous:
        outcomes = await fire_tasks(plan, timeout)
    else:
        outcomes = await anyio.to_thread.run_sync(fire_threads, plan, timeout)
    return _judge(plan, read_runs(runs) - before, outcomes)


def _refuse_running_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise ConfigurationError(
        "assert_runs_once cannot start an event loop inside a running one: in an async test,"
        " use `await aassert_runs_once(...)`."
    )
