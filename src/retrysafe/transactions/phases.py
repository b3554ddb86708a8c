"""Atomic phases: multi-step operations that call other systems, resumable after a crash (B30).

After Brandur Leach's "Implementing Stripe-like Idempotency Keys in Postgres". An operation is
a sequence of named phases. The key is claimed in a transaction of its own and committed in
flight; then each phase runs in one transaction that also moves the record's recovery point to
the phase's name, so the phase's local writes and the recovery point commit together. A retry
(once the crashed holder's lease has expired) takes the record over and resumes after the last
committed phase; a duplicate that arrives while a live holder runs gets `InFlightError`.

A phase may call another system (a payment provider). If the process dies after that call but
before the phase commits, the phase runs again on resume and calls again: so every foreign call
carries `step.foreign_key()`, a key derived from the record and the phase's name (never the
client's raw key), and the other system deduplicates it. The same operation (same record, same
phase) always derives the same key; another operation, or the same client key once its
retention ended, derives another.

A phase returns None to continue, or the operation's outcome (bytes) to finish it: the outcome
commits with that phase's writes and is replayed to every later duplicate. The last phase's
return value is the outcome (None counts as empty).
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retrysafe._clock import Clock, SystemClock
from retrysafe._errors import ConfigurationError
from retrysafe._fingerprint import digest
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions._core import (
    DEFAULT_LEASE,
    DEFAULT_RETENTION,
    AsyncBackend,
    Backend,
    check_settings,
    refusal,
)
from retrysafe.transactions._open import async_backend, sync_backend

if TYPE_CHECKING:
    from retrysafe.transactions._open import AsyncConnection, SyncConnection

__all__ = ["PhasesResult", "Step", "arun_phases", "foreign_key", "run_phases"]

logger = logging.getLogger("retrysafe")


def foreign_key(record: Record, phase: str, label: str = "") -> str:
    """Return the idempotency key for a foreign call made by `phase` of `record`'s operation.

    A UUID (version 8: derived, RFC 9562) from the record's identity digest, its creation time
    and the phase name, so every retry and takeover of the operation derives the same key and
    nothing else does. The client's key cannot be read back from it.

    Args:
        record: the operation's record.
        phase: the phase that makes the call.
        label: tells apart several calls made by one phase.
    """
    parts = ("retrysafe-foreign-key", record.identity.digest(), repr(record.created_at), phase)
    value = int(digest(p.encode("utf-8", "surrogatepass") for p in (*parts, label))[:32], 16)
    value &= ~(0xF000 << 64)  # version field
    value |= 0x8000 << 64  # version 8
    value &= ~(0xC000 << 48)  # variant field
    value |= 0x8000 << 48  # RFC 9562 variant
    return str(uuid.UUID(int=value))


@dataclass(frozen=True, slots=True)
class Step:
    """The phase that is running, as its function sees it.

    Attributes:
        name: the phase's name.
        record: the operation's record, as this phase's transaction holds it.
    """

    name: str
    record: Record

    def foreign_key(self, label: str = "") -> str:
        """Return the key for a foreign call made by this phase (see `foreign_key`)."""
        return foreign_key(self.record, self.name, label)


@dataclass(frozen=True, slots=True)
class PhasesResult:
    """How a phased operation ended.

    Attributes:
        outcome: the operation's outcome, stored and replayed.
        replay: whether the operation had finished already, so no phase ran now.
        resumed_from: the recovery point this run resumed after (None: from the start).
        ran: the phases this run committed, in order.
    """

    outcome: bytes
    replay: bool
    resumed_from: str | None
    ran: tuple[str, ...]


PhaseFunction = Callable[[Step], "bytes | None"]
AsyncPhaseFunction = Callable[[Step], Awaitable["bytes | None"]]


class _Plan:
    """The settings and the phase order shared by the sync and async runners."""

    def __init__(
        self,
        phases: Mapping[str, object],
        *,
        identity: Identity,
        fingerprint: str,
        lease: float,
        retention: float,
        clock: Clock | None,
    ) -> None:
        check_settings(identity, fingerprint, lease, retention)
        if not phases:
            raise ConfigurationError("An operation needs at least one phase.")
        for name, function in phases.items():
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"A phase name is a non-empty str, not {name!r}.")
            if not callable(function):
                raise ConfigurationError(f"Phase {name!r} is not callable: {function!r}.")
        self.names = list(phases)
        self.identity = identity
        self.fingerprint = fingerprint
        self.lease = lease
        self.retention = retention
        self.clock: Clock = clock or SystemClock()

    def remaining(self, recovery_point: str | None) -> list[tuple[str, bool]]:
        """Return (name, is_last) for each phase after `recovery_point`."""
        start = 0
        if recovery_point is not None:
            if recovery_point not in self.names[:-1]:
                raise ConfigurationError(
                    f"The operation's recovery point {recovery_point!r} is not one of its "
                    f"phases before the last ({self.names}); was the phase list changed while "
                    "an operation was in flight?"
                )
            start = self.names.index(recovery_point) + 1
        last = len(self.names) - 1
        return [(self.names[index], index == last) for index in range(start, len(self.names))]

    def check_claim(self, claim: Claim, now: float) -> None:
        """Raise the refusal of a claim that was neither acquired nor a replay."""
        if not claim.acquired:
            error = refusal(claim, self.fingerprint, now)
            if error is not None:
                raise error


def _check_fresh(in_transaction: bool) -> None:
    if in_transaction:
        raise ConfigurationError(
            "Atomic phases commit one transaction per phase: commit or roll back the "
            "connection's open transaction first."
        )


def run_phases(
    connection: SyncConnection,
    phases: Mapping[str, PhaseFunction],
    *,
    identity: Identity,
    fingerprint: str,
    table: str = DEFAULT_TABLE,
    lease: float = DEFAULT_LEASE,
    retention: float = DEFAULT_RETENTION,
    clock: Clock | None = None,
) -> PhasesResult:
    """Run an operation as atomic phases, resuming after its last committed phase.

        result = run_phases(conn, {"reserve": reserve, "charge": charge, "finish": finish},
                            identity=identity, fingerprint=fp)

    Args:
        connection: a `sqlite3.Connection`, a psycopg `Connection` or a SQLAlchemy `Session`,
            with no transaction open: each phase commits on its own.
        phases: phase name to function, in order. A function takes the `Step` and makes the
            phase's writes on `connection`; it returns None to continue or the outcome to
            finish. Phases that run after a resume must read what earlier phases wrote from the
            database, not from memory.
        identity: the key's (namespace, scope, key).
        fingerprint: a digest of the request; the same key with another one is refused.
        table: the records table (the store's `table` option).
        lease: seconds the operation holds its key between phases; each phase renews it. A
            retry after a crash waits for it to expire (`InFlightError` until then).
        retention: seconds the outcome is kept and replayed after the operation finishes.
        clock: the time source (default: the system clock).

    Raises:
        KeyMismatchError: the key was used with another request.
        InFlightError: a live holder is running the operation.
        FencedError: the operation was taken over while this run was between phases.
    """
    plan = _Plan(
        phases,
        identity=identity,
        fingerprint=fingerprint,
        lease=lease,
        retention=retention,
        clock=clock,
    )
    backend = sync_backend(connection, table)
    _check_fresh(backend.in_transaction())
    claim = _claim(backend, plan)
    if not claim.acquired:
        return PhasesResult(claim.record.outcome or b"", True, None, ())
    record = claim.record
    resumed_from = record.recovery_point
    try:
        remaining = plan.remaining(resumed_from)
    except ConfigurationError:
        _expire_lease(backend, plan, record.token)
        raise
    ran: list[str] = []
    for name, last in remaining:
        backend.begin()
        try:
            record = backend.renew(identity, record.token, now=plan.clock.now(), lease=plan.lease)
            outcome = phases[name](Step(name, record))
            if outcome is not None or last:
                outcome = _bytes(outcome, name)
                backend.complete(
                    identity, record.token, outcome, now=plan.clock.now(), retention=retention
                )
            else:
                record = backend.checkpoint(identity, record.token, name, now=plan.clock.now())
        except BaseException as error:
            _end_quietly(backend)
            if isinstance(error, Exception):
                _expire_lease(backend, plan, record.token)
            raise
        backend.end(commit=True)
        ran.append(name)
        if outcome is not None:
            return PhasesResult(outcome, False, resumed_from, tuple(ran))
    raise ConfigurationError("The operation has no phase left to run.")  # pragma: no cover


def _claim(backend: Backend, plan: _Plan) -> Claim:
    """Claim the key in a transaction of its own, committed in flight."""
    backend.begin()
    try:
        now = plan.clock.now()
        claim = backend.claim(
            plan.identity,
            plan.fingerprint,
            now=now,
            lease=plan.lease,
            retention=plan.retention,
        )
        plan.check_claim(claim, now)
    except BaseException:
        _end_quietly(backend)
        raise
    backend.end(commit=claim.acquired)
    return claim


def _end_quietly(backend: Backend) -> None:
    try:
        backend.end(commit=False)
    except Exception:
        logger.warning("Rolling back a phase failed", exc_info=True)


def _expire_lease(backend: Backend, plan: _Plan, token: str) -> None:
    """End the lease of a phase that raised, so a retry resumes at once."""
    try:
        backend.begin()
        try:
            backend.renew(plan.identity, token, now=plan.clock.now(), lease=0.0)
        except BaseException:
            _end_quietly(backend)
            raise
        backend.end(commit=True)
    except Exception:
        logger.warning("Could not end the lease of a failed phase", exc_info=True)


async def arun_phases(
    connection: AsyncConnection,
    phases: Mapping[str, AsyncPhaseFunction],
    *,
    identity: Identity,
    fingerprint: str,
    table: str = DEFAULT_TABLE,
    lease: float = DEFAULT_LEASE,
    retention: float = DEFAULT_RETENTION,
    clock: Clock | None = None,
) -> PhasesResult:
    """The async twin of `run_phases`, with `async def` phase functions.

    Args:
        connection: a psycopg `AsyncConnection` or a SQLAlchemy `AsyncSession`, with no
            transaction open.
        phases: phase name to `async def` function, in order (see `run_phases`).
        identity: the key's (namespace, scope, key).
        fingerprint: a digest of the request; the same key with another one is refused.
        table: the records table (the store's `table` option).
        lease: seconds the operation holds its key between phases.
        retention: seconds the outcome is kept and replayed after the operation finishes.
        clock: the time source (default: the system clock).
    """
    plan = _Plan(
        phases,
        identity=identity,
        fingerprint=fingerprint,
        lease=lease,
        retention=retention,
        clock=clock,
    )
    backend = async_backend(connection, table)
    _check_fresh(backend.in_transaction())
    claim = await _aclaim(backend, plan)
    if not claim.acquired:
        return PhasesResult(claim.record.outcome or b"", True, None, ())
    record = claim.record
    resumed_from = record.recovery_point
    try:
        remaining = plan.remaining(resumed_from)
    except ConfigurationError:
        await _aexpire_lease(backend, plan, record.token)
        raise
    ran: list[str] = []
    for name, last in remaining:
        await backend.begin()
        try:
            record = await backend.renew(
                identity, record.token, now=plan.clock.now(), lease=plan.lease
            )
            outcome = await _awaited(phases[name](Step(name, record)), name)
            if outcome is not None or last:
                outcome = _bytes(outcome, name)
                await backend.complete(
                    identity, record.token, outcome, now=plan.clock.now(), retention=retention
                )
            else:
                record = await backend.checkpoint(
                    identity, record.token, name, now=plan.clock.now()
                )
        except BaseException as error:
            await _aend_quietly(backend)
            if isinstance(error, Exception):
                await _aexpire_lease(backend, plan, record.token)
            raise
        await backend.end(commit=True)
        ran.append(name)
        if outcome is not None:
            return PhasesResult(outcome, False, resumed_from, tuple(ran))
    raise ConfigurationError("The operation has no phase left to run.")  # pragma: no cover


async def _aclaim(backend: AsyncBackend, plan: _Plan) -> Claim:
    await backend.begin()
    try:
        now = plan.clock.now()
        claim = await backend.claim(
            plan.identity,
            plan.fingerprint,
            now=now,
            lease=plan.lease,
            retention=plan.retention,
        )
        plan.check_claim(claim, now)
    except BaseException:
        await _aend_quietly(backend)
        raise
    await backend.end(commit=claim.acquired)
    return claim


async def _aend_quietly(backend: AsyncBackend) -> None:
    try:
        await backend.end(commit=False)
    except Exception:
        logger.warning("Rolling back a phase failed", exc_info=True)


async def _aexpire_lease(backend: AsyncBackend, plan: _Plan, token: str) -> None:
    try:
        await backend.begin()
        try:
            await backend.renew(plan.identity, token, now=plan.clock.now(), lease=0.0)
        except BaseException:
            await _aend_quietly(backend)
            raise
        await backend.end(commit=True)
    except Exception:
        logger.warning("Could not end the lease of a failed phase", exc_info=True)


async def _awaited(returned: Awaitable[bytes | None], phase: str) -> bytes | None:
    if not inspect.isawaitable(returned):
        raise TypeError(f"Phase {phase!r} must be an async function.")
    return await returned


def _bytes(outcome: object, phase: str) -> bytes:
    if outcome is None:
        return b""
    if not isinstance(outcome, bytes | bytearray | memoryview):
        raise TypeError(
            f"Phase {phase!r} returned {type(outcome).__name__}: return None to continue, "
            "or the outcome as bytes to finish."
        )
    return bytes(outcome)
