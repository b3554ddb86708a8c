"""Atomic phases on Django's connection: the claim, then each phase, in an atomic block of its own.

The same run as `run_phases` (`_async/phases.py` and its generated sync twin) on the backend of
`_django.py`: there, the backend comes from the connection (`_dispatch.sync_backend`), which
knows the raw drivers only; Django's connection needs its transactions to go through
`transaction.atomic`, so that the ORM calls a phase makes (`get_or_create`, a save of a model
with parents, any nested `atomic`) stay inside the phase's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Unpack

from retrysafe._errors import ConfigurationError
from retrysafe.transactions._django import DjangoBackend
from retrysafe.transactions._state import ClaimOptions
from retrysafe.transactions._steps import (
    PhaseFunction,
    PhasesResult,
    Plan,
    Step,
    as_outcome,
    call_phase,
    check_fresh,
)

# The lease of a failed phase ends as in `run_phases`, by its own helper.
from retrysafe.transactions._sync.phases import _expire_lease
from retrysafe.transactions._sync.transaction import begin_claim, rollback

__all__ = ["run_django_phases"]


def run_django_phases(
    backend: DjangoBackend, phases: Mapping[str, PhaseFunction], **options: Unpack[ClaimOptions]
) -> PhasesResult:
    """Run an operation as atomic phases on `backend`, resuming after its last committed phase.

    Raises:
        ConfigurationError: the connection is in an atomic block (each phase commits on its
            own), or the recovery point is not one of the phases.
        KeyMismatchError, InFlightError, FencedError: as `retrysafe.transactions.run_phases`.
    """
    plan = Plan(phases, **options)
    check_fresh(backend.in_transaction())
    claim = begin_claim(backend, plan)
    backend.end(commit=claim.acquired)  # the claim commits in flight; a replay wrote nothing
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
            record = backend.renew(
                plan.identity, record.token, now=plan.clock.now(), lease=plan.lease
            )
            outcome = call_phase(phases[name], Step(name, record))
            if outcome is not None or last:
                outcome = as_outcome(outcome, name)
                backend.complete(
                    plan.identity,
                    record.token,
                    outcome,
                    now=plan.clock.now(),
                    retention=plan.retention,
                )
            else:
                record = backend.checkpoint(plan.identity, record.token, name, now=plan.clock.now())
        except BaseException as error:
            rollback(backend)
            if isinstance(error, Exception):
                _expire_lease(backend, plan, record.token)
            raise
        backend.end(commit=True)
        ran.append(name)
        if outcome is not None:
            return PhasesResult(outcome, False, resumed_from, tuple(ran))
    raise ConfigurationError("The operation has no phase left to run.")  # pragma: no cover
