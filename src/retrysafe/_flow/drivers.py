"""The drivers of the flow: `SyncFlow` with a sync store, `AsyncFlow` with an async one.

Each runs `admission()` against its store, and gives an acquired claim an execution: counted,
its lease renewed while the operation runs (`retrysafe._heartbeat`), then finished by storing
the outcome (B18) or releasing the claim (B28). Failures to renew, store or release are logged
and counted by `Finisher`, never raised (B19), except a fencing when the face asks for it (B17).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

import anyio

from retrysafe._flow.admission import Admission, ClaimStep, Terms, admission, advance
from retrysafe._flow.counters import Count, Finisher
from retrysafe._heartbeat import THREADS, AsyncHeartbeat, ThreadBeat
from retrysafe._record import Identity
from retrysafe.stores.base import AsyncStore, Store

__all__ = ["AsyncExecution", "AsyncFlow", "SyncExecution", "SyncFlow"]

FlowT = TypeVar("FlowT")

_CLEANUP_SECONDS: Final = 5.0
"""How long a release may take once the caller was cancelled."""
_LOGGER: Final = logging.getLogger("retrysafe")


class SyncFlow(Finisher[Store]):
    """Drives `admission` and executions with a sync store (arguments: see `Finisher`)."""

    __slots__ = ()

    def admit(self, identity: Identity, fingerprint: str, terms: Terms) -> Admission:
        """Claim `identity`, waiting for a duplicate in flight; return what was decided."""
        store = self.store
        steps = admission(identity, fingerprint, terms, clock=store.clock)
        step = advance(steps, None)
        while not isinstance(step, Admission):
            if isinstance(step, ClaimStep):
                step = advance(steps, store.claim(identity, fingerprint, **step.terms()))
            else:
                step = advance(steps, store.wait(identity, timeout=step.timeout))
        return self.admitted(step)

    def execution(self, identity: Identity, token: str, terms: Terms) -> SyncExecution:
        """Return the execution of an acquired claim, to run the operation in (`with`)."""
        return SyncExecution(self, identity, token, terms.lease, terms.retention)

    def release(self, identity: Identity, token: str) -> None:
        """Release the claim so a retry runs again; a failure is logged, never raised."""
        try:
            self.store.release(identity, token)
        except Exception as error:
            self.release_failed(identity, error)

    def renew(self, identity: Identity, token: str, lease: float) -> bool:
        """Renew the lease once; return whether to keep renewing."""
        try:
            self.store.renew(identity, token, lease=lease)
        except Exception as error:
            return self.renew_failed(identity, error)
        return True

    def complete(self, identity: Identity, token: str, outcome: bytes, retention: float) -> None:
        """Store the outcome; a failure is logged and counted (B19), a fencing maybe raised."""
        try:
            self.store.complete(identity, token, outcome, retention=retention)
        except Exception as error:
            self.complete_failed(identity, error)


@dataclass(eq=False)
class _Execution(Generic[FlowT]):
    """An acquired claim's operation: which claim, and how long its lease and outcome live."""

    _flow: FlowT
    identity: Identity
    token: str
    lease: float
    retention: float
    finished: bool = field(default=False, init=False)


class SyncExecution(_Execution["SyncFlow"]):
    """One operation under an acquired claim: counted, its lease renewed, then finished.

        with flow.execution(identity, token, terms) as run:
            result = operation()
            run.finish(outcome_bytes)      # or finish(None): release, a retry runs again

    Leaving the block without `finish` (an exception, say) releases the claim.
    """

    _beat: ThreadBeat | None = None

    def __enter__(self) -> SyncExecution:
        return self.start()

    def start(self) -> SyncExecution:
        """Count the execution and start renewing its lease (B16)."""
        self._flow.counters.add(Count.EXECUTIONS)
        flow, identity, token, lease = self._flow, self.identity, self.token, self.lease
        self._beat = THREADS.start(lambda: flow.renew(identity, token, lease), lease / 3)
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
            self._flow.complete(self.identity, self.token, outcome, self.retention)


class AsyncFlow(Finisher[AsyncStore]):
    """Drives `admission` and executions with an async store (see `SyncFlow`)."""

    __slots__ = ()

    async def admit(self, identity: Identity, fingerprint: str, terms: Terms) -> Admission:
        """Claim `identity`, waiting for a duplicate in flight; return what was decided."""
        store = self.store
        steps = admission(
            identity, fingerprint, terms, clock=store.clock, elapsed=anyio.current_time
        )
        step = advance(steps, None)
        while not isinstance(step, Admission):
            if isinstance(step, ClaimStep):
                step = advance(steps, await store.claim(identity, fingerprint, **step.terms()))
            else:
                step = advance(steps, await store.wait(identity, timeout=step.timeout))
        return self.admitted(step)

    def execution(self, identity: Identity, token: str, terms: Terms) -> AsyncExecution:
        """Return the execution of an acquired claim, to run the operation in (`async with`)."""
        return AsyncExecution(self, identity, token, terms.lease, terms.retention)

    async def release(self, identity: Identity, token: str) -> None:
        """Release the claim so a retry runs again; shielded from the caller's cancellation."""
        with anyio.move_on_after(_CLEANUP_SECONDS, shield=True):
            try:
                await self.store.release(identity, token)
            except Exception as error:
                self.release_failed(identity, error)

    async def renew(self, identity: Identity, token: str, lease: float) -> bool:
        """Renew the lease once; return whether to keep renewing."""
        try:
            await self.store.renew(identity, token, lease=lease)
        except Exception as error:
            return self.renew_failed(identity, error)
        return True

    async def complete(
        self, identity: Identity, token: str, outcome: bytes, retention: float
    ) -> None:
        """Store the outcome, shielded from cancellation (see `SyncFlow.complete`)."""
        with anyio.CancelScope(shield=True):
            try:
                await self.store.complete(identity, token, outcome, retention=retention)
            except Exception as error:
                self.complete_failed(identity, error)


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
        """Stop renewing, then store `outcome`, or release the claim when it is None."""
        if self.finished:
            return
        self.finished = True
        if self._beat is not None:
            await self._beat.stop()
        if outcome is None:
            await self._flow.release(self.identity, self.token)
        else:
            await self._flow.complete(self.identity, self.token, outcome, self.retention)
