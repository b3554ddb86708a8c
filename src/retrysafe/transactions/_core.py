"""Transactional mode: the claim, the business writes and the outcome commit together (B29).

`Transaction` and `AsyncTransaction` drive one database transaction through a backend, the
part that knows a driver (`_sqlite.py`, `_psycopg.py`, `_sqlalchemy.py`):

    begin (or a savepoint) -> claim the key -> [the caller's writes] -> store the outcome -> commit

The claim runs on the caller's connection with the store's own statements, so the record lands
in the store's table, where the stores, the middleware and `retrysafe keys` see it. A duplicate
that arrives meanwhile waits on the key's unique index (PostgreSQL) or the write lock (SQLite)
until the first transaction ends, then replays; an exception or a crash rolls back the claim
together with the writes, so a retry starts on clean state.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Protocol

from retrysafe._clock import Clock, SystemClock
from retrysafe._engine import Decision, decide
from retrysafe._errors import ConfigurationError, InFlightError, KeyMismatchError, StoreError
from retrysafe._record import Claim, Identity, Record

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_RETENTION",
    "AsyncBackend",
    "AsyncTransaction",
    "Backend",
    "Transaction",
    "check_settings",
    "refusal",
]

DEFAULT_RETENTION = 24 * 3600.0
"""How long a finished outcome is kept and replayed (B21): 24 hours."""
DEFAULT_LEASE = 30.0
"""How long a claim that is committed in flight (a phased operation) lives without a renewal."""

logger = logging.getLogger("retrysafe")


class Backend(Protocol):
    """A connection's transaction control and the record statements run inside it."""

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open already."""
        ...

    def begin(self) -> None:
        """Start a transaction (a savepoint if one is open), holding what the claim must lock."""
        ...

    def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` started."""
        ...

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim inside the transaction."""
        ...

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome on the held record inside the transaction."""
        ...

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease inside the transaction (and lock it there)."""
        ...

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase on the held record inside the transaction."""
        ...


class AsyncBackend(Protocol):
    """The async twin of `Backend`."""

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open already."""
        ...

    async def begin(self) -> None:
        """Start a transaction (a savepoint if one is open), holding what the claim must lock."""
        ...

    async def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` started."""
        ...

    async def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim inside the transaction."""
        ...

    async def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome on the held record inside the transaction."""
        ...

    async def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease inside the transaction (and lock it there)."""
        ...

    async def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase on the held record inside the transaction."""
        ...


def check_settings(identity: Identity, fingerprint: str, lease: float, retention: float) -> None:
    """Refuse settings that cannot work, before any I/O."""
    if not isinstance(identity, Identity):
        raise ConfigurationError(f"identity must be a retrysafe.Identity, not {identity!r}.")
    if not isinstance(fingerprint, str):
        raise ConfigurationError("fingerprint must be a str (a digest of the request).")
    if lease <= 0 or retention <= 0:
        raise ConfigurationError("lease and retention must be positive seconds.")


def refusal(claim: Claim, fingerprint: str, now: float) -> Exception | None:
    """Return the error for a claim that was not acquired, or None when it is a replay."""
    record = claim.record
    decision = decide(record, fingerprint, now)
    if decision is Decision.REPLAY:
        return None
    if decision is Decision.MISMATCH:
        return KeyMismatchError(
            f"Idempotency key {record.identity.key!r} was already used with a different request."
        )
    if decision is Decision.IN_FLIGHT:
        return InFlightError(
            f"A request is outstanding for idempotency key {record.identity.key!r}.",
            retry_after=max(1.0, record.lease_expires_at - now),
        )
    return StoreError("The store refused a claim that the engine says may be taken.")


class _TransactionState:
    """What the sync and async transactions share: settings, the claim, the outcome."""

    def __init__(
        self,
        *,
        identity: Identity,
        fingerprint: str,
        lease: float,
        retention: float,
        clock: Clock | None,
    ) -> None:
        check_settings(identity, fingerprint, lease, retention)
        self.identity = identity
        self.fingerprint = fingerprint
        self.lease = lease
        self.retention = retention
        self.clock: Clock = clock or SystemClock()
        self._claim: Claim | None = None
        self._outcome: bytes | None = None
        self._entered = False

    @property
    def record(self) -> Record:
        """The record as the claim found or made it."""
        return self._held().record

    @property
    def replay(self) -> bool:
        """Whether the key has a stored outcome: return `outcome`, write nothing."""
        return not self._held().acquired

    @property
    def taken_over(self) -> bool:
        """Whether the claim took over a record whose holder stopped renewing its lease."""
        return self._held().taken_over

    @property
    def outcome(self) -> bytes | None:
        """The stored outcome on a replay, or the one given to `complete` (None before it)."""
        claim = self._held()
        if not claim.acquired:
            return claim.record.outcome
        return self._outcome

    def complete(self, outcome: bytes) -> None:
        """Set the outcome that commits with the writes and is replayed to every duplicate.

        Args:
            outcome: the encoded result (a response body, a JSON document); stored as is.
        """
        if self.replay:
            raise RuntimeError("This key is a replay: there is nothing to complete.")
        if not isinstance(outcome, bytes | bytearray | memoryview):
            raise TypeError(f"An outcome is bytes, not {type(outcome).__name__}.")
        self._outcome = bytes(outcome)

    def _held(self) -> Claim:
        if self._claim is None:
            raise RuntimeError("Use the transaction in a `with` block first.")
        return self._claim

    def _start(self) -> None:
        if self._entered:
            raise RuntimeError("A transaction runs once; open a new one for the next attempt.")
        self._entered = True

    def _accept(self, claim: Claim, now: float) -> None:
        """Keep `claim` if it is acquired or a replay; raise the refusal otherwise."""
        if not claim.acquired:
            error = refusal(claim, self.fingerprint, now)
            if error is not None:
                raise error
        self._claim = claim

    def _outcome_to_store(self, exc_type: type[BaseException] | None) -> bytes | None:
        """Return the outcome to store before the commit, or None to roll back instead."""
        claim = self._claim
        if exc_type is not None or claim is None or not claim.acquired:
            # An error rolls everything back; a replay rolls back anything the block wrote.
            return None
        return self._outcome

    def _forgot_outcome(self, exc_type: type[BaseException] | None) -> bool:
        """Return whether the block ended normally on an acquired claim without `complete`."""
        claim = self._claim
        return exc_type is None and claim is not None and claim.acquired and self._outcome is None


_FORGOTTEN = (
    "The transaction ended without tx.complete(outcome); its writes were rolled back, since an "
    "effect without a stored outcome could not be replayed."
)


class Transaction(_TransactionState):
    """A database transaction in which a key's claim commits with the business writes.

    Use it as a context manager; build it with `retrysafe.transactions.sqlite`, `.psycopg`
    or `.sqlalchemy`:

        with transactions.sqlite(conn, identity=identity, fingerprint=fp) as tx:
            if tx.replay:
                return tx.outcome
            conn.execute("INSERT INTO payments ...")
            tx.complete(body)

    Entering claims the key inside a new transaction (or a savepoint of the open one). A
    finished key is a replay: `tx.outcome` holds the stored outcome and anything the block
    writes is rolled back. The same key with another fingerprint raises `KeyMismatchError`; a
    key held by an operation committed in flight (atomic phases) raises `InFlightError`.
    Leaving the block stores the outcome given to `complete` and commits; an exception rolls
    back the claim with the writes and propagates.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        identity: Identity,
        fingerprint: str,
        lease: float = DEFAULT_LEASE,
        retention: float = DEFAULT_RETENTION,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            identity=identity,
            fingerprint=fingerprint,
            lease=lease,
            retention=retention,
            clock=clock,
        )
        self._backend = backend

    def __enter__(self) -> Transaction:
        self._start()
        self._backend.begin()
        try:
            now = self.clock.now()
            claim = self._backend.claim(
                self.identity,
                self.fingerprint,
                now=now,
                lease=self.lease,
                retention=self.retention,
            )
            self._accept(claim, now)
        except BaseException:
            self._rollback()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        outcome = self._outcome_to_store(exc_type)
        if outcome is None:
            self._rollback(quiet=exc_type is not None)
            if self._forgot_outcome(exc_type):
                raise RuntimeError(_FORGOTTEN)
            return
        try:
            self._backend.complete(
                self.identity,
                self._held().token,
                outcome,
                now=self.clock.now(),
                retention=self.retention,
            )
        except BaseException:
            self._rollback(quiet=True)
            raise
        self._backend.end(commit=True)

    def _rollback(self, *, quiet: bool = True) -> None:
        try:
            self._backend.end(commit=False)
        except Exception:
            if not quiet:
                raise
            logger.warning("Rolling back a transaction failed", exc_info=True)


class AsyncTransaction(_TransactionState):
    """The async twin of `Transaction`: `async with`, on an async connection or session.

    async with transactions.psycopg(aconn, identity=identity, fingerprint=fp) as tx:
        if tx.replay:
            return tx.outcome
        await aconn.execute("INSERT INTO payments ...")
        tx.complete(body)
    """

    def __init__(
        self,
        backend: AsyncBackend,
        *,
        identity: Identity,
        fingerprint: str,
        lease: float = DEFAULT_LEASE,
        retention: float = DEFAULT_RETENTION,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            identity=identity,
            fingerprint=fingerprint,
            lease=lease,
            retention=retention,
            clock=clock,
        )
        self._backend = backend

    async def __aenter__(self) -> AsyncTransaction:
        self._start()
        await self._backend.begin()
        try:
            now = self.clock.now()
            claim = await self._backend.claim(
                self.identity,
                self.fingerprint,
                now=now,
                lease=self.lease,
                retention=self.retention,
            )
            self._accept(claim, now)
        except BaseException:
            await self._rollback()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        outcome = self._outcome_to_store(exc_type)
        if outcome is None:
            await self._rollback(quiet=exc_type is not None)
            if self._forgot_outcome(exc_type):
                raise RuntimeError(_FORGOTTEN)
            return
        try:
            await self._backend.complete(
                self.identity,
                self._held().token,
                outcome,
                now=self.clock.now(),
                retention=self.retention,
            )
        except BaseException:
            await self._rollback(quiet=True)
            raise
        await self._backend.end(commit=True)

    async def _rollback(self, *, quiet: bool = True) -> None:
        try:
            await self._backend.end(commit=False)
        except Exception:
            if not quiet:
                raise
            logger.warning("Rolling back a transaction failed", exc_info=True)
