"""The executions of acquired claims: `SyncExecution` and `AsyncExecution`.

An execution counts the operation, renews its lease while it runs (`retrysafe._heartbeat`,
B16), then finishes it through its flow (`drivers.py`): the outcome completed (B18), or the
claim released (B28).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Self, TypeVar

from retrysafe._concurrency import monotonic
from retrysafe._flow.counters import Count
from retrysafe._flow.holding import Held
from retrysafe._flow.shielded import run_to_end
from retrysafe._heartbeat import THREADS, AsyncHeartbeat, ThreadJob, every
from retrysafe._record import Identity, Record

if TYPE_CHECKING:
    from retrysafe._flow.admission import Admission, Terms
    from retrysafe._flow.drivers import AsyncFlow, SyncFlow  # noqa: F401 (the bases name them)

__all__ = ["AsyncExecution", "SyncExecution"]

FlowT = TypeVar("FlowT")


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


class SyncExecution(_Execution["SyncFlow"]):
    """One operation under an acquired claim: counted, its lease renewed, then finished.

        with flow.execution(identity, token, terms) as run:
            result = operation()
            run.finish(outcome_bytes)      # or finish(None): release, a retry runs again

    Leaving the block without `finish` (an exception, say) releases the claim.
    """

    _beat: ThreadJob | None = None

    def __enter__(self) -> SyncExecution:
        return self.start()

    def start(self) -> SyncExecution:
        """Count the execution and start renewing its lease (B16)."""
        self._flow.counters.add(Count.EXECUTIONS)
        flow, identity, token, lease = self._flow, self.identity, self.token, self.lease
        renewing = every(lease / 3, lambda: flow.renew(identity, token, lease))
        self._beat = THREADS.start(renewing, lease / 3)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.finished:
            self.finish(None)

    def finish(self, outcome: bytes | None) -> None:
        """Stop renewing, then store `outcome`, or release the claim when it is None."""
        if self.finished:
            return
        self.finished = True
        if self._beat is not None:
            THREADS.stop(self._beat)
        if outcome is None:
            self._flow.release(self.identity, self.token)
        else:
            self._flow.complete(self, outcome)


class AsyncExecution(_Execution["AsyncFlow"]):
    """One async operation under an acquired claim (see `SyncExecution`)."""

    _beat: AsyncHeartbeat | None = None

    async def __aenter__(self) -> AsyncExecution:
        return await self.start()

    async def start(self) -> AsyncExecution:
        """Count the execution and start renewing its lease (B16)."""
        self._flow.counters.add(Count.EXECUTIONS)
        flow, identity, token, lease = self._flow, self.identity, self.token, self.lease
        self._beat = AsyncHeartbeat(lambda: flow.renew(identity, token, lease), lease / 3)
        await self._beat.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self.finished:
            await self.finish(None)

    async def finish(self, outcome: bytes | None) -> None:
        """Stop renewing, then store `outcome`, or release the claim when it is None, to the
        end whatever cancels the caller (`run_to_end`); directly where nothing can (a store
        whose calls never wait, `suspends` False, the memory store's, and no renewal running)."""
        if self.finished:
            return
        self.finished = True
        flow = self._flow
        if getattr(flow.store, "suspends", True) or (self._beat and self._beat.renewing):
            await run_to_end(self._finish(outcome), flow.tasks)
        else:
            await self._finish(outcome)

    async def _finish(self, outcome: bytes | None) -> None:
        if self._beat is not None:
            await self._beat.stop()
        if outcome is None:
            await self._flow.release(self.identity, self.token)
        else:
            await self._flow.complete(self, outcome)
