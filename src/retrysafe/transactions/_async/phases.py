"""Running atomic phases: claim in a transaction of its own, then one transaction per phase.

The plan, the steps, the result and foreign keys are `transactions/_steps.py`; what atomic
phases guarantee is told in `transactions/phases.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Unpack

from retrysafe._errors import ConfigurationError, FencedError
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions._async.encrypted import encrypting
from retrysafe.transactions._async.outbox import AsyncOutboxWriter
from retrysafe.transactions._async.transaction import abegin_claim, arollback
from retrysafe.transactions._dispatch import async_backend
from retrysafe.transactions._state import check_not_aborted
from retrysafe.transactions._steps import (
    AsyncPhaseFunction,
    PhasesResult,
    Plan,
    Step,
    acall_phase,
    as_outcome,
    check_fresh,
)

if TYPE_CHECKING:
    from retrysafe._encryption import Keyring
    from retrysafe.transactions._async.transaction import AsyncBackend
    from retrysafe.transactions._drivers import AsyncConnection
    from retrysafe.transactions._state import ClaimOptions

__all__ = ["arun_phases", "arun_phases_on"]

logger = logging.getLogger("retrysafe")

ENDED_INSIDE_PHASE: Final = (
    "The transaction of phase {name!r} was no longer open when the phase ended: the phase (or "
    "something it called) committed or rolled back the connection itself, so what it wrote "
    "before that may be committed while the phase is not recorded as done, and a retry runs "
    "the phase again. Do not commit or roll back the connection inside a phase; raise to undo it."
)


async def arun_phases(
    connection: AsyncConnection,
    phases: Mapping[str, AsyncPhaseFunction],
    *,
    table: str = DEFAULT_TABLE,
    encryption: Keyring | None = None,
    **options: Unpack[ClaimOptions],
) -> PhasesResult:
    """Run an operation as atomic phases, resuming after its last committed phase.

        result = await arun_phases(
            conn,
            {"reserve": reserve, "charge": charge, "finish": finish},
            identity=identity,
            fingerprint=fp,
        )

    Args:
        connection: with no transaction open, as each phase commits on its own: a
            `sqlite3.Connection`, a psycopg or PyMySQL `Connection` or a SQLAlchemy `Session`
            for the sync function; psycopg's or aiomysql's async connection or SQLAlchemy's
            async session for the async one, whose phase functions are coroutine functions.
        phases: phase name to function, in order. A function takes the `Step` and makes the
            phase's writes on `connection`; it returns None to continue or the outcome to
            finish. Phases that run after a resume must read what earlier phases wrote from the
            database, not from memory.
        identity: the key's (namespace, scope, key).
        fingerprint: a digest of the request; the same key with another one is refused.
        table: the records table (the store's `table` option).
        encryption: the keys that encrypt the outcome at rest, those of the store that shares
            the table (docs/encryption.md); default none. A record a resumed or replayed run
            finds is opened with them.
        lease: seconds the operation holds its key between phases; each phase renews it as
            it begins and again in the transaction that commits it, so a phase longer than
            the lease loses nothing. A retry after a crash waits for it to expire
            (`InFlightError` until then).
        retention: seconds the outcome is kept and replayed after the operation finishes.
        clock: the time source (default: the system clock).

    Raises:
        ConfigurationError: `encryption` is not a `Keyring`, a transaction is open already, or
            the recovery point is not one of the phases.
        RuntimeError: a phase committed or rolled back the connection itself (the phase is
            not recorded as done).
        TransactionAbortedError: a phase caught a database error and returned, its
            transaction aborted: it was rolled back, and a retry runs it again.
        KeyMismatchError: the key was used with another request.
        InFlightError: a live holder is running the operation.
        FencedError: the operation was taken over while this run was between phases.
        RecordUnreadableError: the record's outcome does not open with `encryption`.
    """
    backend = encrypting(async_backend(connection, table), encryption)
    return await arun_phases_on(backend, phases, **options)


async def arun_phases_on(
    backend: AsyncBackend,
    phases: Mapping[str, AsyncPhaseFunction],
    **options: Unpack[ClaimOptions],
) -> PhasesResult:
    """Run an operation as atomic phases on `backend` (`arun_phases`, for a backend made
    elsewhere: Django's connection, whose transactions go through `transaction.atomic`).

    Encryption at rest is the backend's: wrap it in `AsyncEncryptedBackend` to seal the outcome.
    """
    plan = Plan(phases, **options)
    check_fresh(backend.in_transaction())
    claim = await abegin_claim(backend, plan)
    await backend.end(commit=claim.acquired)  # the claim commits in flight; a replay wrote nothing
    if not claim.acquired:
        return PhasesResult(claim.record.outcome or b"", True, None, ())
    record = claim.record
    identity = plan.identity
    resumed_from = record.recovery_point
    try:
        remaining = plan.remaining(resumed_from)
    except ConfigurationError:
        await _expire_lease(backend, plan, record.token)
        raise
    ran: list[str] = []
    for name, last in remaining:
        await backend.begin()
        try:
            record = await backend.renew(
                identity, record.token, now=plan.clock.now(), lease=plan.lease
            )
            step = Step(name, record)
            outcome = await _call_in_transaction(backend, phases[name], step)
            await AsyncOutboxWriter(backend).write(step.outbox, now=plan.clock.now())
            now = plan.clock.now()
            if outcome is not None or last:
                outcome = as_outcome(outcome, name)
                await backend.complete(
                    identity, record.token, outcome, now=now, retention=plan.retention
                )
            else:
                # Committing the phase proves the holder alive: the lease runs from here, so a
                # claim that waited on this transaction's row lock finds it live (B16).
                record = await backend.renew(identity, record.token, now=now, lease=plan.lease)
                record = await backend.checkpoint(identity, record.token, name, now=now)
        except BaseException as error:
            await arollback(backend)
            if isinstance(error, Exception):
                await _expire_lease(backend, plan, record.token)
            raise
        await backend.end(commit=True)
        ran.append(name)
        if outcome is not None:
            return PhasesResult(outcome, False, resumed_from, tuple(ran))
    raise ConfigurationError("The operation has no phase left to run.")  # pragma: no cover


async def _call_in_transaction(
    backend: AsyncBackend, function: AsyncPhaseFunction, step: Step
) -> bytes | None:
    """Run a phase's function; refuse it if it ended the transaction `begin` opened, as its
    writes may then be committed already, without the recovery point that says so, or if it
    left that transaction aborted (`TransactionAbortedError`: nothing of it was applied)."""
    try:
        outcome = await acall_phase(function, step)
    except Exception as error:
        if not backend.in_transaction():
            raise RuntimeError(ENDED_INSIDE_PHASE.format(name=step.name)) from error
        raise
    if not backend.in_transaction():
        raise RuntimeError(ENDED_INSIDE_PHASE.format(name=step.name))
    check_not_aborted(backend)  # its recovery point cannot be stored: it runs again
    return outcome


async def _expire_lease(backend: AsyncBackend, plan: Plan, token: str) -> None:
    """End the lease of a phase that raised, so a retry resumes at once; a lease taken over
    meanwhile (fenced) is the new holder's, left alone."""
    try:
        await backend.begin()
        try:
            await backend.renew(plan.identity, token, now=plan.clock.now(), lease=0.0)
        except BaseException:
            await arollback(backend)
            raise
        await backend.end(commit=True)
    except FencedError:
        logger.debug("A failed phase's lease was taken over already; left to its new holder")
    except Exception:
        logger.warning("Could not end the lease of a failed phase", exc_info=True)
