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
`SkippedError` before the record is touched. The completer only takes over the live record it
found, keeping its creation time, recovery point and expiry (the application's retention: the
claim and the outcome are kept at least that long, whatever the completer's `retention`); an
operation whose record expired or was deleted is `SkippedError`, never begun anew with new
foreign keys. Whoever wins, the record's own claim and fencing decide
who runs the phases: a live lease refuses the other with `InFlightError`, a takeover fences the
old holder (`FencedError` at its next phase).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from retrysafe._errors import IdempotencyError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe.completer._sealing import RowSealing
from retrysafe.completer._table import ResumableTable
from retrysafe.stores._sql.postgres_deadline import Armed, ReadDeadline, unavailable
from retrysafe.transactions._state import was_aborted
from retrysafe.transactions._sync.transaction import Backend

__all__ = ["ClientRun", "CompleterRun", "ResumableBackend", "SkippedError"]

_GONE = (
    "Operation {key!r} has no live record (it expired or was deleted): the completer does not "
    "start it again, which would run its phases anew with new foreign keys."
)


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
        deadline: the completer's read deadline on PostgreSQL (`Connector.deadline`), armed
            over its own statements and commits (`bounded`), not over the phases' statements.
    """

    def __init__(
        self,
        backend: Backend,
        side: ResumableTable,
        run: ClientRun | CompleterRun,
        sealing: RowSealing,
        deadline: ReadDeadline | None = None,
    ) -> None:
        self.backend = backend
        self._deadline = deadline
        self._armed: Armed | None = None
        self.side = side
        self.run = run
        self.sealing = sealing
        self.claimed: Record | None = None
        self._keep_until: float | None = None

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open already."""
        return self.backend.in_transaction()

    def aborted(self) -> bool:
        """Return whether the backend's open transaction was aborted (a phase caught a
        database error and went on): the phase is refused instead of committing nothing."""
        return was_aborted(self.backend)

    def begin(self) -> None:
        """Start the backend's transaction (or savepoint)."""
        with self.bounded():
            self.backend.begin()

    def end(self, *, commit: bool) -> None:
        """Commit or roll back the backend's transaction."""
        with self.bounded():
            self.backend.end(commit=commit)

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Claim the record; if acquired, store the request or count the attempt with it."""
        with self.bounded():
            return self._claim(identity, fingerprint, now=now, lease=lease, retention=retention)

    def _claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        run = self.run
        self.side.create()
        if isinstance(run, CompleterRun):
            retention = self._horizon(identity, now=now, lease=lease, retention=retention)
        claim = self.backend.claim(identity, fingerprint, now=now, lease=lease, retention=retention)
        if not claim.acquired:  # a replay, or a refusal the runner raises
            return claim
        if isinstance(run, CompleterRun):
            if not claim.taken_over:  # its record expired meanwhile: this claim began anew
                raise SkippedError(_GONE.format(key=identity.key))
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

    def _horizon(self, identity: Identity, *, now: float, lease: float, retention: float) -> float:
        """Return the retention the completer claims with: at least what keeps the live
        record's own expiry (the application's retention). An operation without a live
        in-flight record (expired, deleted, finished) is not the completer's to run."""
        record = self.side.record(identity, now)
        if record is None or record.state is not State.IN_FLIGHT:
            raise SkippedError(_GONE.format(key=identity.key))
        self._keep_until = record.expires_at
        return max(retention, record.expires_at - now - lease)

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome and delete the resumable row, in the same transaction."""
        if self._keep_until is not None:  # the completer's: kept as long as the app chose
            retention = max(retention, self._keep_until - now)
        with self.bounded():
            done = self.backend.complete(identity, token, outcome, now=now, retention=retention)
            self.side.delete(identity.digest())
        return done

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Renew the held record's lease."""
        with self.bounded():
            return self.backend.renew(identity, token, now=now, lease=lease)

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase."""
        with self.bounded():
            return self.backend.checkpoint(identity, token, recovery_point, now=now)

    @contextlib.contextmanager
    def bounded(self) -> Iterator[None]:
        """Arm the read deadline over the block (once: an inner block runs under the outer's
        arming); a statement it cut fails with `StoreUnavailableError`."""
        deadline = self._deadline
        if deadline is None or self._armed is not None:
            yield
            return
        self._armed = deadline.arm(self.side.connection)
        try:
            yield
        except Exception as error:
            armed, self._armed = self._armed, None
            if deadline.disarm(armed):
                raise unavailable(deadline.timeout) from error
            raise
        armed, self._armed = self._armed, None
        deadline.disarm(armed)
