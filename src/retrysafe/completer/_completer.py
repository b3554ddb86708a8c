"""The completer: finishes operations whose client is gone, from their last recovery point.

A pass (`Completer.run_once`) reads, in one short transaction, the operations of the registry's
namespaces left in flight past their lease and not marked for a person, oldest first (on
PostgreSQL `FOR UPDATE SKIP LOCKED`, so completers on several machines split them). Each is then
run by atomic phases exactly as a late client retry would run it: the claim takes the expired
lease over with a new fencing token (counting the attempt in the same transaction) and the run
resumes after the last committed phase. A completer and a client, or two completers, never
both run a phase: the loser's claim meets a live lease (`InFlightError`), or its next phase
finds its token fenced (`FencedError`), and it passes over the operation.

An attempt that fails keeps its error; once `max_attempts` are spent, the operation is marked
as needing a person (`_attention.py`) and the completer leaves it alone. An operation that fails
before its claim for a reason of its own (its builder raised or left a transaction open, its
phases are refused) counts an attempt too, so it cannot head every pass for ever; only a
database error leaves the attempts alone. Operations are isolated: an error one of them raises
is logged and the pass goes on to the next, unless the database cannot be used now.

On PostgreSQL through a `_connect.Connector`, the completer's own statements and commits (not
the phases' statements) are bounded by the store URL's `read_timeout`: a server that stalls
fails the pass with `StoreUnavailableError` instead of holding it for ever.

With keys (`encryption=`, or a store URL's `encryption_key_env` through `_connect.Connector`),
the outcomes and marks it stores are sealed as an encrypted store's are, and the stored request
and last error are opened and sealed with them (`_sealing.py`).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final, TypedDict

from retrysafe._clock import Clock, SystemClock, check_durations
from retrysafe._encryption import Keyring
from retrysafe._errors import (
    ConfigurationError,
    FencedError,
    InFlightError,
    StoreError,
    StoreUnavailableError,
)
from retrysafe._record import Identity, State
from retrysafe.completer._attention import write_mark
from retrysafe.completer._backend import CompleterRun, ResumableBackend, SkippedError
from retrysafe.completer._connect import Connector
from retrysafe.completer._registry import Registry, resumable_backend
from retrysafe.completer._table import ResumableRow
from retrysafe.observe._text import printable
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions import _drivers as drivers
from retrysafe.transactions._state import DEFAULT_LEASE, DEFAULT_RETENTION, check_keyring
from retrysafe.transactions._sync.phases import run_phases_on

__all__ = ["Completer", "Pass"]

logger = logging.getLogger("retrysafe.completer")
_ERROR_CHARS: Final = 500
_LEFT_OPEN: Final = (
    "The builder of namespace {namespace!r} left a transaction open on the completer's "
    "connection (it ran a statement on a connection not in autocommit), and atomic phases "
    "commit one transaction per phase: give the completer connections in autocommit, as "
    "`psycopg.connect(..., autocommit=True)`, or let the builder end what it began."
)
_GONE: Final = (
    "Operation {key!r} cannot be retried: its record expired or was deleted, so the phases it "
    "committed (and the foreign keys they used) are no longer known; running it would start it "
    "again from its first phase. Check what it did by hand (docs/completer.md)."
)


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass did, operation by operation.

    Attributes:
        completed: operations it brought to their end.
        failed: attempts that raised (their error kept on the operation), and operations a
            database error passed over (logged).
        skipped: operations another completer or a client held, or had just finished.
        needs_attention: operations it gave up on in this pass.
    """

    completed: int = 0
    failed: int = 0
    skipped: int = 0
    needs_attention: int = 0

    def __add__(self, other: Pass) -> Pass:
        return Pass(
            self.completed + other.completed,
            self.failed + other.failed,
            self.skipped + other.skipped,
            self.needs_attention + other.needs_attention,
        )

    @property
    def handled(self) -> int:
        """How many operations the pass looked at."""
        return self.completed + self.failed + self.skipped + self.needs_attention


class _Terms(TypedDict):
    """The claim's terms the completer holds an operation with."""

    lease: float
    retention: float
    clock: Clock


@dataclass
class Completer:
    """Re-drives the registry's operations that were left in flight past their lease.

        completer = Completer(registry, connect=lambda: sqlite3.connect("app.db"))
        completer.run_once()            # one pass; or completer.run(stop) until stop is set

    Args:
        registry: the operations, by namespace; only their namespaces are looked at.
        connect: opens a `sqlite3.Connection` or a psycopg `Connection` (one per pass, closed
            after it); the operations' phases write on it.
        table: the records table (the store's `table` option).
        max_attempts: runs of one operation before it is marked as needing a person.
        lease: the lease the completer holds an operation with (each phase renews it).
        retention: seconds a finished operation's outcome is kept (as the application's).
        batch: operations looked at per pass, at most.
        interval: seconds `run` waits between passes when there was nothing to do.
        clock: the time source (default: the system clock).
        encryption: the keys that encrypt what it stores at rest and open what it reads (the
            outcomes, the stored requests): those the application's `Registry.run` is given
            (docs/encryption.md). Default: the keys of the store URL's `encryption_key_env`
            when `connect` is a `Connector` from one, else none.
    """

    registry: Registry
    _: KW_ONLY
    connect: Callable[[], Any]
    table: str = DEFAULT_TABLE
    max_attempts: int = 5
    lease: float = DEFAULT_LEASE
    retention: float = DEFAULT_RETENTION
    batch: int = 100
    interval: float = 5.0
    clock: Clock = field(default_factory=SystemClock)
    encryption: Keyring | None = None

    def __post_init__(self) -> None:
        carried = self.connect.encryption if isinstance(self.connect, Connector) else None
        if carried is not None and self.encryption not in (None, carried):
            raise ConfigurationError(
                "Give the completer's encryption keys once: as encryption= or as the store "
                "URL's encryption_key_env."
            )
        self.encryption = check_keyring(self.encryption or carried)
        check_durations(self.lease, self.retention, self.interval, wait_name="interval")
        if self.max_attempts < 1 or self.batch < 1:
            raise ConfigurationError("max_attempts and batch must be at least 1.")

    def run_once(self, stop: threading.Event | None = None) -> Pass:
        """Look at the operations waiting now (up to `batch`); return what was done. Once
        `stop` is set, the pass ends after the operation in progress."""
        with self._connection() as connection:
            backend = self._backend(connection)
            with _transaction(backend):
                now = self.clock.now()
                backend.side.create()
                backend.side.delete_orphans(now, self.batch)
                digests = backend.side.candidates(self.registry.namespaces, now, self.batch)
            done = Pass()
            for digest in digests:
                if stop is not None and stop.is_set():
                    break
                done += self._complete(connection, digest, isolated=True)
            return done

    def run(self, stop: threading.Event | None = None) -> None:
        """Run passes until `stop` is set (the operation in progress is finished): at once after
        a full batch, else every `interval`.

        A pass that fails (the database is unreachable) is logged, and the next one tries again.
        """
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                handled = self.run_once(stop).handled
            except Exception:
                logger.warning("A completer pass failed", exc_info=True)
                handled = 0
            if handled < self.batch:
                stop.wait(self.interval)

    def retry(self, identity: Identity) -> Pass:
        """Give a marked operation its attempts back and run it now (after its cause is fixed).

        Raises:
            ConfigurationError: no unfinished operation of the registry has this identity, or
                its record expired or was deleted (it is never started again).
        """
        with self._connection() as connection:
            backend = self._backend(connection)
            with _transaction(backend):
                backend.side.create()
                if backend.side.row(identity.digest()) is None:
                    raise ConfigurationError(
                        f"No unfinished resumable operation has key {identity.key!r} in scope "
                        f"{identity.scope!r}, namespace {identity.namespace!r}."
                    )
                record = backend.side.record(identity, self.clock.now())
                if record is None or record.state is not State.IN_FLIGHT:
                    raise ConfigurationError(_GONE.format(key=identity.key))
                backend.side.reset(identity.digest())
            return self._complete(connection, identity.digest())

    def find(self, key: str) -> list[ResumableRow]:
        """Return the unfinished operations whose client key is `key`."""
        with self._connection() as connection:
            backend = self._backend(connection)
            with _transaction(backend):
                backend.side.create()
                rows = backend.side.with_key(key)
            return [backend.sealing.open_row(row) for row in rows]

    def _complete(self, connection: Any, digest: str, *, isolated: bool = False) -> Pass:
        """Run one operation from its recovery point; return what became of it. If
        `isolated` (in a pass), an error it raises is logged and counted as failed, unless the
        database cannot be used now (`_unavailable`): then the pass ends with it."""
        backend = self._backend(connection)
        with _transaction(backend):
            row = backend.side.row(digest)
        if row is None or row.attention_at is not None:
            return Pass(skipped=1)
        try:
            return self._attempt(connection, row)
        except Exception as error:
            if not isolated or _unavailable(error, connection):
                raise
            identity = row.identity
            logger.warning(
                "Completing %r (scope %r, namespace %r) failed; the pass goes on to the next "
                "operation",
                printable(identity.key),
                printable(identity.scope),
                printable(identity.namespace),
                exc_info=True,
            )
            connection.rollback()  # what the error left open, before the next operation
            return Pass(failed=1)

    def _attempt(self, connection: Any, row: ResumableRow) -> Pass:
        """Run the operation of `row` once, or give up on it if its attempts are spent."""
        backend = self._backend(connection)
        if row.attempts >= self.max_attempts:  # spent, but not marked: a crash in between
            return self._give_up(connection, row)
        try:
            phases = self._build(backend, connection, row)
        except Exception as error:  # a request that does not open or that the builder refuses
            # counts as an attempt
            return self._failed(connection, row, error, counted=False)
        try:
            terms = _Terms(lease=self.lease, retention=self.retention, clock=self.clock)
            result = run_phases_on(
                backend, phases, identity=row.identity, fingerprint=row.fingerprint, **terms
            )
        except (SkippedError, InFlightError, FencedError):
            return Pass(skipped=1)
        except Exception as error:
            if backend.claimed is None and _database_error(error):
                raise  # the claim itself failed (the database): nothing was attempted
            # Refused before its claim (its phases, a used key): counted here, as the claim
            # that counts attempts never ran, or the operation would head every pass.
            return self._failed(connection, row, error, counted=backend.claimed is not None)
        # A replay: a client's retry finished it since the row was read; nothing ran here.
        return Pass(skipped=1) if result.replay else Pass(completed=1)

    def _build(
        self, backend: ResumableBackend, connection: Any, row: ResumableRow
    ) -> Mapping[str, Any]:
        """Return the phases of `row`'s operation, built from its stored request."""
        request = backend.sealing.open_request(row.identity, row.request)
        phases = self.registry.build(row.identity.namespace, request, connection)
        if backend.in_transaction():
            raise ConfigurationError(_LEFT_OPEN.format(namespace=row.identity.namespace))
        return phases

    def _failed(
        self, connection: Any, row: ResumableRow, error: Exception, *, counted: bool
    ) -> Pass:
        """Keep `error` on the operation (and count the attempt if its claim did not);
        give up on it once its attempts are spent."""
        message = f"{type(error).__name__}: {error}".replace("\n", " ")[:_ERROR_CHARS]
        logger.warning("Completing %r failed: %s", row.identity.key, printable(message))
        backend = self._backend(connection)
        if backend.in_transaction():  # the builder's: the count must commit, not nest in it
            connection.rollback()
        sealed = backend.sealing.seal_error(row.identity, message)
        with _transaction(backend):
            backend.side.count(row.identity.digest(), attempts=0 if counted else 1, error=sealed)
            now = backend.side.row(row.identity.digest())
        if now is not None and now.attempts >= self.max_attempts:
            return self._give_up(connection, now)
        return Pass(failed=1)

    def _give_up(self, connection: object, row: ResumableRow) -> Pass:
        """Mark the operation as needing a person, if it is still as the last attempt left it."""
        backend = self._backend(connection)
        digest = row.identity.digest()
        with _transaction(backend):
            now = self.clock.now()
            locked = backend.side.row(digest, lock=True)
            record = backend.side.record(row.identity, now)
            if locked is None or locked.attention_at is not None or record is None:
                return Pass(skipped=1)
            if record.state is not State.IN_FLIGHT or record.lease_expires_at > now:
                return Pass(skipped=1)  # finished, or a client holds it now
            backend.side.mark_attention(digest, now)
            last_error = backend.sealing.open_error(row.identity, locked.last_error)
            write_mark(  # through the backend's encryption: the mark is sealed as outcomes are
                backend.backend, record, attempts=locked.attempts, last_error=last_error, now=now
            )
        logger.error(
            "Operation %r in namespace %r needs attention after %d attempts: %s",
            row.identity.key,
            row.identity.namespace,
            locked.attempts,
            printable(str(last_error)),
        )
        return Pass(needs_attention=1)

    def _backend(self, connection: object) -> ResumableBackend:
        run = CompleterRun(self.max_attempts)
        deadline = self.connect.deadline if isinstance(self.connect, Connector) else None
        return resumable_backend(connection, self.table, run, self.encryption, deadline)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        connection = self.connect()
        try:
            yield connection
        finally:
            connection.close()


def _database_error(error: Exception) -> bool:
    """Return whether `error` is the database's: the store's error, or the driver's."""
    psycopg = drivers.psycopg_module()
    return isinstance(error, StoreError | sqlite3.Error) or (
        psycopg is not None and isinstance(error, psycopg.Error)
    )


def _unavailable(error: Exception, connection: Any) -> bool:
    """Return whether `error` says the database cannot be used now (unreachable, locked, the
    connection lost), so every later operation of the pass would fail the same way."""
    if getattr(connection, "broken", False) or getattr(connection, "closed", False):
        return True  # psycopg's lost or closed connection
    psycopg = drivers.psycopg_module()
    return isinstance(error, StoreUnavailableError | sqlite3.OperationalError) or (
        psycopg is not None and isinstance(error, psycopg.OperationalError)
    )


@contextlib.contextmanager
def _transaction(backend: ResumableBackend) -> Iterator[None]:
    """One transaction on the backend's connection: committed, or rolled back on an error;
    its statements (the completer's own) under the read deadline."""
    with backend.bounded():
        backend.begin()
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                backend.end(commit=False)
            raise
        backend.end(commit=True)
