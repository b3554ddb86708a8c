"""Atomic phases on Django's connection: the claim, then each phase, in an atomic block of its own.

The same run as `run_phases` (`_async/phases.py` and its generated sync twin, through
`run_phases_on`) on the backend of `_django.py`: `run_phases` makes its backend from the
connection (`_dispatch.sync_backend`), which knows the raw drivers only; Django's connection
needs its transactions to go through `transaction.atomic`, so that the ORM calls a phase makes
(`get_or_create`, a save of a model with parents, any nested `atomic`) stay inside the phase's
transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Unpack

from retrysafe.transactions._state import ClaimOptions
from retrysafe.transactions._steps import PhaseFunction, PhasesResult
from retrysafe.transactions._sync.phases import run_phases_on
from retrysafe.transactions._sync.transaction import Backend

__all__ = ["run_django_phases"]


def run_django_phases(
    backend: Backend, phases: Mapping[str, PhaseFunction], **options: Unpack[ClaimOptions]
) -> PhasesResult:
    """Run an operation as atomic phases on `backend`, resuming after its last committed phase
    (`run_phases_on`: the same run as `run_phases`).

    Raises:
        ConfigurationError: the connection is in an atomic block (each phase commits on its
            own), or the recovery point is not one of the phases.
        KeyMismatchError, InFlightError, FencedError: as `retrysafe.transactions.run_phases`.
    """
    return run_phases_on(backend, phases, **options)
