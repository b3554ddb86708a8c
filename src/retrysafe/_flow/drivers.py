"""The drivers of the flow: `SyncFlow` with a sync store, `AsyncFlow` with an async one.

Each runs `admission()` against its store, and gives an acquired claim an execution: counted,
its lease renewed while the operation runs (`retrysafe._heartbeat`), then finished by storing
the outcome (B18) or releasing the claim (B28). Failures to renew, store or release are logged
and counted by `Finisher`, never raised (B19), except a fencing when the face asks for it (B17).
"""

from __future__ import annotations

import logging
from typing import Final

import anyio

from retrysafe._flow.admission import Admission, ClaimStep, admission
from retrysafe._flow.counters import Count, Counters, Finisher
from retrysafe._heartbeat import THREADS, AsyncHeartbeat, ThreadBeat
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores.base import AsyncStore, Store

__all__ = ["AsyncExecution", "AsyncFlow", "SyncExecution", "SyncFlow"]

_CLEANUP_SECONDS: Final = 5.0
"""How long a release may take once the caller was cancelled."""
_LOGGER: Final = logging.getLogger("retrysafe")


class SyncFlow(Finisher):
    """Drives `admission` and executions with a sync store.

    Args:
        store: the store.
        counters: where to count (default: new counters).
        logger: where to log store failures.
        raise_fenced: raise `FencedError` from `finish` when the claim was taken over (the
            decorator's caller must learn it, B17), instead of logging it.
    """

    __slots__ = ("store",)

    def __init__(
        self,
        store: Store,
        *,
        counters: Counters | None = None,
        logger: logging.Logger = _LOGGER,
        raise_fenced: bool = False,
    ) -> None:
        super().__init__(counters or Counters(), logger, raise_fenced)
        self.store = store

    def admit(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float, wait: float
    ) -> Admission:
        """Claim `identity`, waiting for a duplicate in flight; return what was decided."""
        store = self.store
        steps = admission(
            identity, fingerprint, lease=lease, retention=retention, wait=wait, clock=store.clock
        )
        step = next(steps)
        try:
            while True:
                if isinstance(step, ClaimStep):
                    answer: Claim | Record | None = store.claim(
                        identity, fingerprint, lease=step.lease, retention=step.retention
                    )
                else:
                    answer = store.wait(identity, timeout=step.timeout)
                step = steps.send(answer)
        except StopIteration as done:
            return self.admitted(done.value)

    def execution(
        self, identity: Identity, token: str, *, lease: float, retention: float
    ) -> SyncExecution:
        """Return the execution of an acquired claim, to run the operation in (`with`)."""
        return SyncExecution(self, identity, token, lease, retention)

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


class SyncExecution:
    """One operation under an acquired claim: counted, its lease renewed, then finished.

        with flow.execution(identity, token, lease=30, retention=86400) as run:
            result = operation()
            run.finish(outcome_bytes)      # or finish(None): release, a retry runs again

    Leaving the block without `finish` (an exception, say) releases the claim.
    """

    __slots__ = ("_beat", "_flow", "finished", "identity", "lease", "retention", "token")

    def __init__(
        self, flow: SyncFlow, identity: Identity, token: str, lease: float, retention: float
    ) -> None:
        self._flow = flow
        self.identity = identity
        self.token = token
        self.lease = lease
        self.retention = retention
        self.finished = False
        self._beat: ThreadBeat | None = None

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


class AsyncFlow(Finisher):
    """Drives `admission` and executions with an async store (see `SyncFlow`)."""

    __slots__ = ("store",)

    def __init__(
        self,
        store: AsyncStore,
        *,
        counters: Counters | None = None,
        logger: logging.Logger = _LOGGER,
        raise_fenced: bool = False,
    ) -> None:
        super().__init__(counters or Counters(), logger, raise_fenced)
        self.store = store

    async def admit(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float, wait: float
    ) -> Admission:
        """Claim `identity`, waiting for a duplicate in flight; return what was decided."""
        store = self.store
        steps = admission(
            identity,
            fingerprint,
            lease=lease,
            retention=retention,
            wait=wait,
            clock=store.clock,
            elapsed=anyio.current_time,
        )
        step = next(steps)
        try:
            while True:
                if isinstance(step, ClaimStep):
                    answer: Claim | Record | None = await store.claim(
                        identity, fingerprint, lease=step.lease, retention=step.retention
                    )
                else:
                    answer = await store.wait(identity, timeout=step.timeout)
                step = steps.send(answer)
        except StopIteration as done:
            return self.admitted(done.value)

    def execution(
        self, identity: Identity, token: str, *, lease: float, retention: float
    ) -> AsyncExecution:
        """Return the execution of an acquired claim, to run the operation in (`async with`)."""
        return AsyncExecution(self, identity, token, lease, retention)

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


class AsyncExecution:
    """One async operation under an acquired claim (see `SyncExecution`)."""

    __slots__ = ("_beat", "_flow", "finished", "identity", "lease", "retention", "token")

    def __init__(
        self, flow: AsyncFlow, identity: Identity, token: str, lease: float, retention: float
    ) -> None:
        self._flow = flow
        self.identity = identity
        self.token = token
        self.lease = lease
        self.retention = retention
        self.finished = False
        flow_, identity_, token_ = flow, identity, token
        self._beat = AsyncHeartbeat(lambda: flow_.renew(identity_, token_, lease), lease / 3)

    async def __aenter__(self) -> AsyncExecution:
        return await self.start()

    async def start(self) -> AsyncExecution:
        """Count the execution and start renewing its lease (B16)."""
        self._flow.counters.add(Count.EXECUTIONS)
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
        await self._beat.stop()
        if outcome is None:
            await self._flow.release(self.identity, self.token)
        else:
            await self._flow.complete(self.identity, self.token, outcome, self.retention)
