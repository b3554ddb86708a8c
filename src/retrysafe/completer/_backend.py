"""The backend the registry's operations run on: transactional mode's, plus the resumable row.

`ResumableBackend` wraps a driver's backend (`transactions._dispatch.sync_backend`) as the
encrypted backend does, and adds the resumable table's writes to the transactions that atomic
phases already make, without changing how they run (`run_phases_on`):

- the claim's transaction stores the request (a client's claim) or counts an attempt (the
  completer's takeover), so a claim that commits has its request stored and its attempt counted;
- the transaction that stores the outcome deletes the row, so a finished operation leaves none.

With keys, the backend it wraps is the encrypted one (`transactions._sync.encrypted`), which
seals the outcome, and the request is sealed before the claim stores it (`_sealing.py`).

In the completer's hands the claim first locks the row (`SKIP LOCKED` on PostgreSQL): a row
another completer is claiming right now, or one marked for a person or out of attempts, is
`SkippedError` before the record is touched. Whoever wins, the record's own claim and fencing decide
who runs the phases: a live lease refuses the other with `InFlightError`, a takeover fences the
old holder (`FencedError` at its next phase).
"""

from __future__ import annotations

from dataclasses import dataclass

from retrysafe._errors import IdempotencyError
from retrysafe._record import Claim, Identity, Record
from retrysafe.completer._sealing import RowSealing
from retrysafe.completer._table import ResumableTable
from retrysafe.transactions._state import was_aborted
from retrysafe.transactions._sync.transaction import Backend

__all__ = ["ClientRun", "CompleterRun", "ResumableBackend", "SkippedError"]


class SkippedError(IdempotencyError):
    """The completer passes over this operation: another completer has it, or it is done
    with attempts (marked for a person)."""


@dataclass(frozen=True, slots=True)
class ClientRun:
    """A run by the application: the claim stores `request` (attempts back at zero)."""

    request: bytes


@dataclass(frozen=True, slots=True)
class CompleterRun:
    """A run by the completer: the claim counts an attempt, up to `max_attempts`."""

    max_attempts: int


class ResumableBackend:
    """`backend`, with the resumable row written in the claim's and the outcome's transactions.

    Args:
        backend: the driver's backend (its `begin` also creates the records table).
        side: the resumable table on the same connection.
        run: who runs the operation, and so what the claim writes.
        sealing: how the row's request and last error are sealed (the backend's keys).
    """

    def __init__(
        self,
        backend: Backend,
        side: ResumableTable,
        run: ClientRun | CompleterRun,
        sealing: RowSealing,
    ) -> None:
        self.backend = backend
        self.side = side
        self.run = run
        self.sealing = sealing
        self.claimed: Record | None = None

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open already."""
        return self.backend.in_transaction()

    def aborted(self) -> bool:
        """Return whether the backend's open transaction was aborted (a phase caught a
        database error and went on): the phase is refused instead of committing nothing."""
        return was_aborted(self.backend)

    def begin(self) -> None:
        """Start the backend's transaction (or savepoint)."""
        self.backend.begin()

    def end(self, *, commit: bool) -> None:
        """Commit or roll back the backend's transaction."""
        self.backend.end(commit=commit)

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Claim the record; if acquired, store the request or count the attempt with it."""
        run = self.run
        self.side.create()
        claim = self.backend.claim(identity, fingerprint, now=now, lease=lease, retention=retention)
        if not claim.acquired:  # a replay, or a refusal the runner raises
            return claim
        if isinstance(run, CompleterRun):
            # The record first, then its row, as in every transaction here: no lock cycle.
            row = self.side.row(identity.digest(), lock=True)
            if row is None or row.attention_at is not None or row.attempts >= run.max_attempts:
                raise SkippedError(f"Operation {identity.key!r} is not the completer's to run.")
            self.side.count(identity.digest(), attempts=1, error=None)
        else:
            request = self.sealing.seal_request(identity, run.request)
            self.side.store(identity, fingerprint, request, now)
        self.claimed = claim.record
        return claim

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome and delete the resumable row, in the same transaction."""
        done = self.backend.complete(identity, token, outcome, now=now, retention=retention)
        self.side.delete(identity.digest())
        return done

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Renew the held record's lease."""
        return self.backend.renew(identity, token, now=now, lease=lease)

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase."""
        return self.backend.checkpoint(identity, token, recovery_point, now=now)
