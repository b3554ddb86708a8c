"""An interruption is never stored as a call's outcome, whatever `final_exceptions` lists
(B40, B28): with `final_exceptions=(BaseException,)` ("every outcome is final"), a call
interrupted while it runs (`SystemExit` from a SIGTERM handler, Ctrl+C, a job runner's time
limit, an async cancellation) keeps its key in flight until its lease ends, as without it, so a
retry after the lease runs the function rather than re-raise the interruption (a stored
`SystemExit` would end every retry's worker). Exceptions in the list are still stored.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from retrysafe import AsyncStore, Identity, InFlightError, ManualClock, Store
from retrysafe._decorator import idempotent
from tests.functions.values import CardDeclinedError


class TimeLimitExceeded(BaseException):
    """A job runner's hard time limit, raised in the job (not an `Exception`)."""


@pytest.mark.parametrize("interrupt", [SystemExit, KeyboardInterrupt, TimeLimitExceeded])
def test_b40_an_interruption_is_not_stored_even_if_final_exceptions_lists_it(
    store: Store, clock: ManualClock, interrupt: type[BaseException]
) -> None:
    """A sync call interrupted mid-body, with `final_exceptions=(BaseException,)`: its claim is
    kept (a retry at once is in flight), and the retry after the lease runs and returns."""
    runs: list[str] = []

    @idempotent(store, key="job", wait=0, namespace="b40-final", final_exceptions=(BaseException,))
    def job(job: str) -> int:
        runs.append(job)
        if len(runs) == 1:
            raise interrupt
        return len(runs)

    def retry() -> int:
        try:
            return job("j")
        except interrupt:  # stored as the outcome and replayed: not what may happen
            pytest.fail(f"the retry raised the first call's {interrupt.__name__}")

    with pytest.raises(interrupt):
        job("j")
    with pytest.raises(InFlightError):
        retry()
    record = store.get(Identity("b40-final", "", "j"))
    assert record is not None
    assert record.state == "in_flight"
    clock.advance(31)  # the default lease, 30 s, has ended
    assert retry() == 2
    assert retry() == 2  # replayed
    assert runs == ["j", "j"]


def test_b28_an_exception_is_still_stored_when_final_exceptions_lists_base_exception(
    store: Store,
) -> None:
    """`final_exceptions=(BaseException,)` still stores an exception (the call's own answer)."""
    runs: list[str] = []

    @idempotent(store, key="card", namespace="b28-final", final_exceptions=(BaseException,))
    def charge(card: str) -> str:
        runs.append(card)
        raise CardDeclinedError(card, "insufficient funds")

    for _ in range(2):
        with pytest.raises(CardDeclinedError):
            charge("c")
    assert runs == ["c"]


@pytest.mark.anyio
async def test_b40_a_cancellation_is_not_stored_even_if_final_exceptions_lists_it(
    astore: AsyncStore, clock: ManualClock
) -> None:
    """An async call cancelled mid-body, with `final_exceptions=(BaseException,)`: its claim is
    kept, and the retry after the lease runs rather than raise `CancelledError`."""
    runs: list[str] = []
    started = anyio.Event()

    @idempotent(astore, key="key", wait=0, namespace="b40-final", final_exceptions=(BaseException,))
    async def charge(key: str) -> int:
        runs.append(key)
        started.set()
        if len(runs) == 1:
            await anyio.sleep_forever()  # waiting for the payment provider's answer, say
        return len(runs)

    async with anyio.create_task_group() as group:
        group.start_soon(charge, "k")
        with anyio.fail_after(10):
            await started.wait()
        group.cancel_scope.cancel()

    async def retry() -> int:
        try:
            return await charge("k")
        except asyncio.CancelledError:  # stored as the outcome and replayed
            pytest.fail("the retry raised the first call's CancelledError")

    with pytest.raises(InFlightError):
        await retry()
    record = await astore.get(Identity("b40-final", "", "k"))
    assert record is not None
    assert record.state == "in_flight"
    clock.advance(31)  # the default lease, 30 s, has ended
    assert await retry() == 2
    assert runs == ["k", "k"]
