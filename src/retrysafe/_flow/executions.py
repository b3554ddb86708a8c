"""The executions of acquired claims: `SyncExecution` and `AsyncExecution`.

An execution counts the operation, renews its lease while it runs (`retrysafe._heartbeat`,
B16), then finishes it through its flow (`drivers.py`): the outcome completed (B18), or the
claim released (B28), or, when the operation was interrupted (`interrupts`), the claim kept
until its lease ends (B40). The lease is renewed until the completion returns (stored, or held
and renewed by the holder, B19): a completion stuck on a connection the network dropped never
outlasts it. An operation whose lease went unrenewed longer than itself, so that it may have
lapsed, is logged (`lapsed`): its event loop held up, its heartbeat thread kept from the GIL by
a C call that holds it, its process stopped, or its renewals failing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Self, TypeGuard, TypeVar

from retrysafe._concurrency import monotonic
from retrysafe._flow.counters import Count, Finisher
from retrysafe._flow.holding import Held
from retrysafe._flow.observing import fields, named
from retrysafe._flow.shielded import run_to_end
from retrysafe._heartbeat import THREADS, AsyncHeartbeat, ThreadJob, every
from retrysafe._record import Identity, Record

if TYPE_CHECKING:
    from retrysafe._flow.admission import Admission, Terms
    from retrysafe._flow.drivers import AsyncFlow, SyncFlow  # noqa: F401 (the bases name them)

__all__ = ["AsyncExecution", "SyncExecution", "interrupts"]

FlowT = TypeVar("FlowT", bound=Finisher[Any])


def interrupts(error: BaseException | None) -> TypeGuard[BaseException]:
    """Return whether `error`, which ended an operation before its outcome, interrupted it from
    outside: a cancellation (`asyncio.CancelledError`: a timeout, a task group, a server past
    its graceful shutdown), `KeyboardInterrupt` or `SystemExit`, anything not an `Exception`.

    An exception is the operation's own answer, and releases the claim so a retry runs again
    (B18, B28). An interruption leaves the outcome unknown: the effect may have happened, its
    answer lost. So the claim is not released (B40): it is kept until its lease ends, as if
    the process had died (B16), and a retry before then waits or is refused as in flight.
    """
    return error is not None and not isinstance(error, Exception)


@dataclass(eq=False)
class _Execution(Generic[FlowT]):
    """An acquired claim's operation: which claim, and how long its lease and outcome live."""

    _flow: FlowT
    identity: Identity
    token: str
    lease: float
    retention: float
    claimed: Record | None = None  # the claim's record, as admitted (its fingerprint)
    finished: bool = field(default=False, init=False)
    completing: bool = field(default=False, init=False)  # storing the outcome, still renewing

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the claim's request, None if it was not admitted by a flow."""
        return None if self.claimed is None else self.claimed.fingerprint

    @classmethod
    def of(cls, flow: FlowT, admitted: Admission, terms: Terms) -> Self:
        """Return the execution on `flow` of an admission's acquired claim."""
        claim = admitted.claim
        if claim is None:
            raise ValueError(f"an admission to {admitted.decision} holds no claim")
        record = claim.record
        return cls(flow, record.identity, claim.token, terms.lease, terms.retention, record)

    def held(self, outcome: bytes, wall: float) -> Held:
        """Return `outcome` held after its first completion failed (B19)."""
        return Held.start(
            self.identity,
            self.token,
            outcome,
            lease=self.lease,
            retention=self.retention,
            claimed=self.claimed,
            now=monotonic(),
            wall=wall,
        )

    def lapsed(self, unrenewed: float) -> None:
        """Warn that the lease went `unrenewed` seconds without a renewal, longer than itself:
        another caller may have taken the key over and run the operation again (B16, B17)."""
        self._flow.counters.add(Count.LAPSED)
        self._flow.logger.warning(
            "The lease on %s went %.1f s without a renewal, longer than the lease (%g s): "
            "the renewals due every %g s failed (see renew_failed) or came late (sync work "
            "blocking the event loop, a C call holding the GIL, or a paused process). Another "
            "caller may have taken the key over and run the operation again",
            named(self.identity),
            unrenewed,
            self.lease,
            self.lease / 3,
            extra=fields(self.identity, "lease_lapsed"),
        )


class SyncExecution(_Execution["SyncFlow"]):
    """One operation under an acquired claim: counted, its lease renewed, then finished.

        with flow.execution(identity, token, terms) as run:
            result = operation()
            run.finish(outcome_bytes)      # or finish(None): release, a retry runs again

    Leaving the block without `finish` releases the claim after an exception, and keeps it
    until its lease ends after an interruption (`interrupts`).

    The heartbeat thread renews only when it gets the GIL and its process runs: a C call that
    holds the GIL (a regex, a compression), or a stopped process, holds it back. Counted on the
    store's clock from the claim or the start of the last renewal that landed, a lease gone
    unrenewed longer than itself is told (`lapsed`) before a renewal or as the operation ends,
    once until a renewal lands again (as `AsyncHeartbeat` does).
    """

    _beat: ThreadJob | None = None
    _since: float = 0.0  # the claim, then the last renewal that landed (inf: lapse told)

    def __enter__(self) -> SyncExecution:
        return self.start()

    def start(self) -> SyncExecution:
        """Count the execution and start renewing its lease (B16)."""
        flow, interval, claimed = self._flow, self.lease / 3, self.claimed
        flow.counters.add(Count.EXECUTIONS)
        self._since = (  # the lease began with the claim, whose reply took some of it
            flow.store.clock.now() if claimed is None else claimed.lease_expires_at - self.lease
        )
        self._beat = THREADS.start(every(interval, self._renew), interval)
        return self

    def _renew(self) -> bool | None:
        """Renew once (the heartbeat's step), told first of a lapse; a renewal that lands
        renews the lease from its start."""
        self._check(at := self._flow.store.clock.now())
        renewed = self._flow.renew(self)
        if renewed:
            self._since = at
        return renewed

    def _check(self, now: float) -> None:
        """Tell `lapsed` if the operation still runs and its lease went unrenewed longer than
        itself, once until a renewal lands."""
        if not self.finished and (unrenewed := now - self._since) > self.lease:
            self._since = math.inf
            self.lapsed(unrenewed)

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if not self.finished:
            self.finish(None, error)

    def finish(self, outcome: bytes | None, error: BaseException | None = None) -> None:
        """Store `outcome`, renewing the lease until that returns, then stop renewing; when it
        is None, stop renewing, then release the claim, or keep it until its lease ends if
        `error` (what ended the operation) interrupted it."""
        if self.finished:
            return
        self._check(self._flow.store.clock.now())  # a lapse while it ran is told now
        self.finished = True
        if outcome is not None:
            self.completing = True
            try:
                self._flow.complete(self, outcome)
            finally:
                self._stop()
            return
        self._stop()
        if interrupts(error):
            self._flow.interrupted(self.identity, error)
        else:
            self._flow.release(self.identity, self.token)

    def _stop(self) -> None:
        """Stop renewing; the heartbeat holds this execution: no cycle is left for the collector."""
        if self._beat is not None:
            THREADS.stop(self._beat)
            self._beat = None


class AsyncExecution(_Execution["AsyncFlow"]):
    """One async operation under an acquired claim (see `SyncExecution`)."""

    _beat: AsyncHeartbeat | None = None

    async def __aenter__(self) -> AsyncExecution:
        return await self.start()

    async def start(self) -> AsyncExecution:
        """Count the execution and start renewing its lease (B16)."""
        self._flow.counters.add(Count.EXECUTIONS)
        flow, lease = self._flow, self.lease
        beat = self._beat = AsyncHeartbeat(
            lambda: flow.renew(self), lease / 3, self, clock=flow.store.clock
        )
        claimed = self.claimed  # the lease began with the claim, whose reply took some of it
        await beat.start(None if claimed is None else claimed.lease_expires_at - lease)
        return self

    async def __aexit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if not self.finished:
            await self.finish(None, error)

    async def finish(self, outcome: bytes | None, error: BaseException | None = None) -> None:
        """Finish as `SyncExecution.finish` does. To the end whatever cancels the caller
        (`run_to_end`); directly where nothing can (a store whose calls never wait, `suspends`
        False, the memory store's, and no renewal running)."""
        if self.finished:
            return
        self.finished = True
        flow, beat = self._flow, self._beat
        if outcome is None and interrupts(error):
            # Nothing to store: keep the claim without waiting for anything, which a coroutine
            # being closed (`GeneratorExit`) could not do. A renewal under way may still land.
            if beat is not None:
                beat.abandon()
                self._beat = None  # it holds this execution: no cycle for the collector
            flow.interrupted(self.identity, error)
            return
        if getattr(flow.store, "suspends", True) or (beat and beat.renewing):
            await run_to_end(self._finish(outcome), flow.tasks)
        else:
            await self._finish(outcome)

    async def _finish(self, outcome: bytes | None) -> None:
        beat, self._beat = self._beat, None  # it holds this execution: no cycle once stopped
        if outcome is None:  # released (an interruption did not come here: `finish`)
            if beat is not None:
                await beat.stop()
            await self._flow.release(self.identity, self.token)
            return
        if beat is not None:
            beat.unwatch()  # the operation ended: a lapse while it ran is told now
        self.completing = True
        try:
            await self._flow.complete(self, outcome)
        finally:
            if beat is not None:
                await beat.stop()
