"""The pure part of atomic phases: the plan, the step a phase sees, the result, foreign keys.

`run_phases` and `arun_phases` (`_async/phases.py` and its generated sync twin) drive a `Plan`
through a backend; everything here is shared by both and does no I/O. See `phases.py` for how
atomic phases work.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Unpack

from retrysafe._errors import ConfigurationError
from retrysafe._fingerprint import digest
from retrysafe._record import Record
from retrysafe.outbox._messages import Outbox
from retrysafe.transactions._state import ClaimOptions, ClaimSettings

__all__ = [
    "AsyncPhaseFunction",
    "PhaseFunction",
    "PhasesResult",
    "Plan",
    "Step",
    "acall_phase",
    "as_outcome",
    "call_phase",
    "check_fresh",
    "foreign_key",
]


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
        outbox: messages written in this phase's transaction when it commits; their ids
            derive from the record and the phase (`retrysafe.outbox`).
    """

    name: str
    record: Record
    outbox: Outbox = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "outbox", Outbox(self.record, self.name))

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


class Plan(ClaimSettings):
    """The claim's settings and the phase order shared by the sync and async runners."""

    def __init__(self, phases: Mapping[str, object], **options: Unpack[ClaimOptions]) -> None:
        super().__init__(**options)
        if not phases:
            raise ConfigurationError("An operation needs at least one phase.")
        for name, function in phases.items():
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"A phase name is a non-empty str, not {name!r}.")
            if not callable(function):
                raise ConfigurationError(f"Phase {name!r} is not callable: {function!r}.")
        self.names = list(phases)

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


def check_fresh(in_transaction: bool) -> None:
    """Refuse a connection with a transaction open: each phase commits on its own."""
    if in_transaction:
        raise ConfigurationError(
            "Atomic phases commit one transaction per phase: commit or roll back the "
            "connection's open transaction first."
        )


def call_phase(function: PhaseFunction, step: Step) -> bytes | None:
    """Run a sync phase function."""
    return function(step)


async def acall_phase(function: AsyncPhaseFunction, step: Step) -> bytes | None:
    """Run an async phase function; one that returns no awaitable is not async."""
    returned = function(step)
    if not inspect.isawaitable(returned):
        raise TypeError(f"Phase {step.name!r} must be an async function.")
    return await returned


def as_outcome(outcome: object, phase: str) -> bytes:
    """Return what a finishing phase returned as the outcome's bytes (None counts as empty)."""
    if outcome is None:
        return b""
    if not isinstance(outcome, bytes | bytearray | memoryview):
        raise TypeError(
            f"Phase {phase!r} returned {type(outcome).__name__}: return None to continue, "
            "or the outcome as bytes to finish."
        )
    return bytes(outcome)
