"""The drivers of the flow: `SyncFlow` with a sync store, `AsyncFlow` with an async one.

Each runs `admission()` against its store, and gives an acquired claim an execution: counted,
its lease renewed (`retrysafe._heartbeat`), then finished by storing the outcome (B18) or
releasing the claim (B28). Store failures are logged and counted by `Finisher`, never raised,
except a fencing when the face asks for it (B17); an outcome the store did not take is held,
retried and answers duplicates (`holding.py`, B19); `drain` / `adrain` wait for it (B40).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import anyio.to_thread  # binds `anyio` too

from retrysafe._concurrency import cancelling, monotonic, raise_if_cancelled
from retrysafe._engine import Decision
from retrysafe._errors import FencedError, StoreError
from retrysafe._fingerprint import Revised
from retrysafe._flow.admission import (
    Admission,
    ClaimStep,
    Terms,
    admission,
    adopted,
    advance,
    former_identity,
    judge,
    successor,
)
from retrysafe._flow.executions import AsyncExecution, SyncExecution
from retrysafe._flow.holding import DEFAULT_DRAIN, Held, Holder, Step
from retrysafe._flow.observing import finish, identify
from retrysafe._flow.shielded import outlast, run_to_end
from retrysafe._heartbeat import HOLDER
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores.base import AsyncStore, Store

__all__ = ["AsyncFlow", "SyncFlow"]

MessageT = TypeVar("MessageT", bound=Mapping[str, Any])

_CLEANUP_SECONDS: Final = 5.0  # how long a release may take once the caller was cancelled


def _renewal_failed(
    flow: Holder[Any], run: SyncExecution | AsyncExecution, error: Exception
) -> bool | None:
    """Count and log a failed renewal of `run`'s lease; return None to try again, False to
    stop. A renewal fenced while the outcome is being stored (`completing`) most often found
    it stored: nothing is logged, and the completion tells whether the claim was lost (B17)."""
    if run.completing and isinstance(error, FencedError):
        return False
    return None if flow.renew_failed(run.identity, error) else False


class SyncFlow(Holder[Store]):
    """Drives `admission` and executions with a sync store (arguments: see `Finisher`)."""

    __slots__ = ()

    def admit(self, identity: Identity, fingerprint: str, terms: Terms) -> Admission:
        """Claim `identity`, waiting for a duplicate in flight; return what was decided. An
        outcome held here (B19) answers first, even if the store is unreachable. A record of
        the previous release's is honoured (B39, `successor` and `adopted`)."""
        if type(identity.scope) is Revised:  # named otherwise before: its record may be there
            former, held = former_identity(identity), self.holdings
            # An outcome held for either name answers (B19); else the former record is read,
            # and a store that cannot answer raises (B20): taken for "no record", the claim
            # that follows could land and run again a request done under the former name.
            unread = held.holds_for(former) or held.holds_for(identity)
            found = None if unread else self.store.get(former)
            identity = successor(identity, former, found, self.store.clock.now(), held)
        admitted = self._admit(identity, fingerprint, terms)
        if admitted.decision is Decision.MISMATCH:
            adopting = adopted(admitted, fingerprint)
            if adopting is not None:
                return self._admit(identity, adopting, terms)
        return admitted

    def _admit(self, identity: Identity, fingerprint: str, terms: Terms) -> Admission:
        identify(identity)
        store, holdings = self.store, self.holdings
        if not holdings.held_any():  # the common case: the admission's first claim, directly
            claim = store.claim(identity, fingerprint, lease=terms.lease, retention=terms.retention)
            judged = judge(claim, fingerprint, store.clock.now())  # execute, replay, mismatch
            if judged is not None and judged.decision is not Decision.IN_FLIGHT:
                return self.admitted(judged)
            steps = admission(identity, fingerprint, terms, clock=store.clock)
            advance(steps, None)  # its first step is that claim
            step = advance(steps, claim)
        else:
            held = holdings.answer(identity, fingerprint, store.clock.now())
            if held is not None:
                return self.admitted(held)
            steps = admission(identity, fingerprint, terms, clock=store.clock)
            step = advance(steps, None)
        while not isinstance(step, Admission):
            found: Claim | Record | None
            try:
                if isinstance(step, ClaimStep):
                    found = store.claim(identity, fingerprint, **step.terms())
                else:
                    found = store.wait(identity, timeout=step.timeout)
            except StoreError:
                held = holdings.answer(identity, fingerprint, store.clock.now())
                if held is None:
                    raise
                return self.admitted(held)
            held = holdings.answer_over(identity, fingerprint, store.clock.now(), found)
            step = held if held is not None else advance(steps, found)
        return self.admitted(step)

    def execution(self, admitted: Admission, terms: Terms) -> SyncExecution:
        """Return the execution of an acquired claim, to run the operation in (`with`)."""
        return SyncExecution.of(self, admitted, terms)

    def release(self, identity: Identity, token: str) -> None:
        """Release the claim so a retry runs again; a failure is logged, never raised."""
        finish("released")
        try:
            self.store.release(identity, token)
        except Exception as error:
            self.release_failed(identity, error)

    def renew(self, run: SyncExecution) -> bool | None:
        """Renew `run`'s lease once; return True, None if it failed (the heartbeat tries again
        soon), or False once fenced (it stops; see `_renewal_failed`)."""
        try:
            self.store.renew(run.identity, run.token, lease=run.lease)
        except Exception as error:
            return _renewal_failed(self, run, error)
        return True

    def complete(self, run: SyncExecution, outcome: bytes) -> None:
        """Store the outcome; if the store fails, hold it and retry on the holder thread (B19).
        A failure is logged and counted, a fencing maybe raised."""
        try:
            self._complete(run, outcome)
            finish("stored")
        except Exception as error:
            if self.complete_failed(run.identity, error):
                held = self.hold(run.held(outcome, self.store.clock.now()))
                job = HOLDER.start(lambda: self._keep(held), held.complete_at - monotonic())
                held.wake = lambda: HOLDER.wake(job)

    def _keep(self, held: Held) -> float | None:
        """Run the held outcome's due steps (on the holder thread); return the seconds until
        the next one, or None once it is stored or given up."""
        while self.holdings.holds(held):
            step = held.next_step(monotonic(), self.store.clock.now())
            if not isinstance(step, Step):
                return step
            error: Exception | None = None
            try:
                if step is Step.RENEW:
                    try:
                        self.store.renew(held.identity, held.token, lease=held.lease)
                    except FencedError:  # gone or taken over: storing the outcome tells which
                        step = Step.COMPLETE
                if step is Step.COMPLETE:
                    self._complete(held, held.outcome)
            except Exception as caught:
                error = caught
            if not self.stepped(held, step, error):
                return None
        return None

    def _complete(self, target: SyncExecution | Held, outcome: bytes) -> None:
        """Store `outcome` under `target`'s claim; if its record is gone, claim it again first
        (`reclaimed`, B19); if it is done under this claim (a reply lost), it is stored."""
        store, identity = self.store, target.identity
        try:
            store.complete(identity, target.token, outcome, retention=target.retention)
        except FencedError as fenced:
            if target.fingerprint is None:
                raise
            claim = store.claim(
                identity, target.fingerprint, lease=target.lease, retention=target.retention
            )
            if self.reclaimed(target, claim, fenced):
                store.complete(identity, target.token, outcome, retention=target.retention)

    def drain(self, timeout: float = DEFAULT_DRAIN) -> bool:
        """Wait up to `timeout` seconds for held outcomes to be stored (B40), trying each at
        once; return whether none is left. Nothing is released: a key whose outcome is still
        held stays in flight until its lease ends. For a WSGI server's shutdown hook."""
        self.nudge_all()
        return self.drained(self.holdings.wait_empty(timeout))


class AsyncFlow(Holder[AsyncStore]):
    """Drives `admission` and executions with an async store (see `SyncFlow`).

    Held outcomes are retried by tasks on the running event loop, which the async store's
    connections belong to (a thread could not use them); the flow keeps them referenced. The
    ASGI middleware drains them at lifespan shutdown (`draining`), before the app closes.
    """

    __slots__ = ("suspends", "tasks")

    def _setup(self) -> None:
        super()._setup()
        self.tasks: set[asyncio.Task[Any]] = set()  # held outcomes', claims', finishing ones
        self.suspends: bool = getattr(self.store, "suspends", True)  # see `_claim`

    async def admit(self, identity: Identity, fingerprint: str, terms: Terms) -> Admission:
        """Claim `identity`, waiting for a duplicate in flight; return what was decided (see
        `SyncFlow.admit`). A caller cancelled on the way is cancelled with no claim left: one
        acquired meanwhile is released first (B28), so the operation does not run, and a retry
        does; even when the cancellation came while the store held the claim (`_claim`), or a
        store call swallowed it (redis-py 8 on a cluster and aiomysql sometimes return the
        reply)."""
        before = cancelling()
        if type(identity.scope) is Revised:  # named otherwise before (B39, `SyncFlow.admit`)
            former, held = former_identity(identity), self.holdings
            unread = held.holds_for(former) or held.holds_for(identity)
            found = None if unread else await self.store.get(former)
            identity = successor(identity, former, found, self.store.clock.now(), held)
        admitted = await self._admit(identity, fingerprint, terms, before)
        if admitted.decision is Decision.MISMATCH:
            adopting = adopted(admitted, fingerprint)
            if adopting is not None:
                admitted = await self._admit(identity, adopting, terms, before)
        if cancelling() > before:
            if admitted.claim is not None:
                await run_to_end(self.release(identity, admitted.claim.token), self.tasks)
            raise asyncio.CancelledError
        return admitted

    async def _admit(
        self, identity: Identity, fingerprint: str, terms: Terms, before: int
    ) -> Admission:
        identify(identity)
        store, holdings = self.store, self.holdings
        clock, elapsed = store.clock, anyio.current_time
        if not holdings.held_any():  # the common case: the admission's first claim, directly
            claim = await self._claim(identity, fingerprint, terms.lease, terms.retention)
            judged = judge(claim, fingerprint, clock.now())  # execute, replay, mismatch
            if judged is not None and judged.decision is not Decision.IN_FLIGHT:
                return self.admitted(judged)
            steps = admission(identity, fingerprint, terms, clock=clock, elapsed=elapsed)
            advance(steps, None)  # its first step is that claim
            step = advance(steps, claim)
        else:
            held = holdings.answer(identity, fingerprint, clock.now())
            if held is not None:
                return self.admitted(held)
            steps = admission(identity, fingerprint, terms, clock=clock, elapsed=elapsed)
            step = advance(steps, None)
        while not isinstance(step, Admission):
            if cancelling() > before:  # a store call swallowed it; nothing is held yet
                raise asyncio.CancelledError
            found: Claim | Record | None
            try:
                if isinstance(step, ClaimStep):
                    found = await self._claim(identity, fingerprint, step.lease, step.retention)
                else:
                    found = await store.wait(identity, timeout=step.timeout)
            except StoreError:
                held = holdings.answer(identity, fingerprint, clock.now())
                if held is None:
                    raise
                return self.admitted(held)
            held = holdings.answer_over(identity, fingerprint, clock.now(), found)
            step = held if held is not None else advance(steps, found)
        return self.admitted(step)

    def _claim(
        self, identity: Identity, fingerprint: str, lease: float, retention: float
    ) -> Awaitable[Claim]:
        """Claim `identity`, the reply read even if the caller is cancelled meanwhile
        (`outlast`), within the store's own timeouts: the store may have applied the claim, and
        only its token releases it. The operation has not run, so an acquired claim is then
        released (B28) and the cancellation raised. Only the claim's round trip: a wait for a
        duplicate stays cancellable at once. A store whose calls never wait (`suspends` False,
        the memory store's) cannot be cancelled inside one: its claim is awaited directly."""
        claiming = self.store.claim(identity, fingerprint, lease=lease, retention=retention)
        return outlast(claiming, self.tasks, self._unclaim) if self.suspends else claiming

    async def _unclaim(self, claim: Claim) -> None:
        """Release `claim` if it was acquired, for a caller cancelled while it was made."""
        if claim.acquired:
            await self.release(claim.record.identity, claim.token)

    def execution(self, admitted: Admission, terms: Terms) -> AsyncExecution:
        """Return the execution of an acquired claim, to run the operation in (`async with`)."""
        return AsyncExecution.of(self, admitted, terms)

    async def release(self, identity: Identity, token: str) -> None:
        """Release the claim so a retry runs again; shielded from the caller's cancellation."""
        with anyio.move_on_after(_CLEANUP_SECONDS, shield=True):
            finish("released")
            try:
                await self.store.release(identity, token)
            except Exception as error:
                self.release_failed(identity, error)

    async def renew(self, run: AsyncExecution) -> bool | None:
        """Renew `run`'s lease once (see `SyncFlow.renew`)."""
        try:
            await self.store.renew(run.identity, run.token, lease=run.lease)
        except Exception as error:
            return _renewal_failed(self, run, error)
        return True

    async def complete(self, run: AsyncExecution, outcome: bytes) -> None:
        """Store the outcome; if the store fails, hold it and retry in a task (see
        `SyncFlow.complete`). `AsyncExecution.finish` keeps cancellations away from it."""
        try:
            await self._complete(run, outcome)
            finish("stored")
        except Exception as error:
            if self.complete_failed(run.identity, error):
                self._spawn(self.hold(run.held(outcome, self.store.clock.now())))

    def _spawn(self, held: Held) -> None:
        """Run the held outcome's steps in a task of their own on the running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio: a system task, which lives as long as the run
            trio_lowlevel = importlib.import_module("trio.lowlevel")
            trio_lowlevel.spawn_system_task(self._keep, held)
            return
        task = loop.create_task(self._keep(held))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _keep(self, held: Held) -> None:
        """Run the held outcome's steps until it is stored or given up (see `SyncFlow._keep`)."""
        try:
            while self.holdings.holds(held):
                step = held.next_step(monotonic(), self.store.clock.now())
                if not isinstance(step, Step):
                    with anyio.move_on_after(step) as sleeping:
                        held.wake = sleeping.cancel  # a drain wants the completion now
                        await anyio.sleep_forever()
                    held.wake = None
                    continue
                error: Exception | None = None
                try:
                    if step is Step.RENEW:
                        try:
                            await self.store.renew(held.identity, held.token, lease=held.lease)
                        except FencedError:  # gone or taken over: storing tells which
                            step = Step.COMPLETE
                    if step is Step.COMPLETE:
                        await self._complete(held, held.outcome)
                except Exception as caught:
                    error = caught
                raise_if_cancelled()
                if not self.stepped(held, step, error):
                    return
        finally:
            self.lost(held)  # the loop is closing under it

    async def _complete(self, target: AsyncExecution | Held, outcome: bytes) -> None:
        """Store `outcome` under `target`'s claim (see `SyncFlow._complete`)."""
        store, identity = self.store, target.identity
        try:
            await store.complete(identity, target.token, outcome, retention=target.retention)
        except FencedError as fenced:
            if target.fingerprint is None:
                raise
            claim = await store.claim(
                identity, target.fingerprint, lease=target.lease, retention=target.retention
            )
            if self.reclaimed(target, claim, fenced):
                await store.complete(identity, target.token, outcome, retention=target.retention)

    async def adrain(self, timeout: float = DEFAULT_DRAIN) -> bool:
        """Wait up to `timeout` seconds for held outcomes to be stored (B40), trying each at
        once; return whether none is left. Nothing is released (see `SyncFlow.drain`)."""
        self.nudge_all()
        left = await anyio.to_thread.run_sync(self.holdings.wait_empty, timeout)
        return self.drained(left)

    def draining(
        self, receive: Callable[[], Awaitable[MessageT]]
    ) -> Callable[[], Awaitable[MessageT]]:
        """Wrap an ASGI lifespan `receive`: on `lifespan.shutdown`, drain (`drain_timeout`)
        before the app sees it, so held outcomes are stored before the app closes (B40)."""

        async def receive_then_drain() -> MessageT:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                await self.adrain(self.drain_timeout)
            return message

        return receive_then_drain
