# Generated from transactions/_async/work.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""One request's work in a web face: claim, run the handler, commit its response with its writes.

Written once, async, for the ASGI middleware on an async connection; the Flask decorator (and the
ASGI middleware on a sync connection, in worker threads) runs its generated sync twin. What it
answers is `retrysafe._http`'s: the replay, the problems, the outcome policy (`_web.py`)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from retrysafe._encryption import behind_encryption
from retrysafe._errors import IdempotencyError, OutcomeUnknownError
from retrysafe._flow import Count, Counters
from retrysafe._flow.observing import decide, finish
from retrysafe._flow.secret import (
    SECRET_FINGERPRINT,
    SECRET_IDENTITY,
    SECRET_RETENTION,
    open_secret,
)
from retrysafe._http import Response, Settings, logger, replay_response, store_unavailable
from retrysafe.transactions._sync.encrypted import encrypting
from retrysafe.transactions._sync.transaction import Transaction
from retrysafe.transactions._dispatch import sync_backend
from retrysafe.transactions._state import TransactionAbortedError, check_not_aborted
from retrysafe.transactions._web import (
    CLEANUP_SECONDS,
    ShieldCancellation,
    RequestTransaction,
    RolledBack,
    aborted_problem,
    outcome_of,
    refused,
)

if TYPE_CHECKING:
    from retrysafe._encryption import Keyring
    from retrysafe.transactions._sync.transaction import Backend
    from retrysafe.transactions._drivers import Connection
    from retrysafe.transactions._state import ClaimOptions

__all__ = ["WorkUnit", "load_scope_secret", "load_secret_of", "encrypting"]


class WorkUnit:
    """One request's work on a connection: a claim transaction, or a plain one.

    A request with a key runs in transactional mode; one without (an optional key that was not
    sent, a method the route does not cover) still gets its writes committed together, in a
    plain transaction, by the same outcome policy.

    Args:
        connection: the request's connection or session.
        table: the records table.
        claim: the request's claim; None for a request without a key.
        settings: the request's settings (the outcome policy, the problems).
        counters: where executions, replays and failed commits are counted.
        encryption: the keys that encrypt the stored response at rest (None: stored in clear).
    """

    def __init__(
        self,
        connection: Connection,
        table: str,
        claim: ClaimOptions | None,
        settings: Settings,
        counters: Counters,
        *,
        encryption: Keyring | None = None,
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.counters = counters
        self._backend = encrypting(sync_backend(connection, table), encryption)
        self._tx = None if claim is None else Transaction(self._backend, **claim)

    def request_transaction(self) -> RequestTransaction[object]:
        """Return what the handler writes with: the connection, and the key as claimed."""
        record = None if self._tx is None else self._tx.record
        identity = None if record is None else record.identity
        outbox = None if self._tx is None else self._tx.outbox
        return RequestTransaction(self.connection, identity, record, outbox)

    def start(self) -> Response | None:
        """Begin the transaction and claim the key; return the answer that stands instead of
        the handler's (a replay, a refusal), or None to run the handler."""
        tx = self._tx
        try:
            if tx is None:
                self._backend.begin()
            else:
                tx.__enter__()
        except IdempotencyError as error:
            problem = refused(error, self.settings)
            if problem is None:
                raise
            return problem
        if tx is None:
            return None
        if tx.replay:
            self._rollback()
            self.counters.add(Count.REPLAYS)
            decide("replay")
            return replay_response(tx.record, self.settings)
        self.counters.add(Count.EXECUTIONS)
        decide("execute")
        return None

    def finish(self, response: Response, *, handler: str) -> Response | None:
        """Commit the handler's complete `response` with its writes, or roll back by the outcome
        policy (B18); return the problem that replaces it, else None: a 503 if the commit
        failed, a 500 if `handler` (its name, for the log) left its transaction aborted."""
        outcome = outcome_of(response, self.settings)
        try:
            with ShieldCancellation():
                self._end(outcome)
        except TransactionAbortedError:
            self.rollback()  # nothing was applied, and the key is free again
            return aborted_problem(self.settings, handler)
        except Exception as error:
            self.counters.add(Count.COMPLETE_FAILURES)
            finish("store_failed")  # rolled back with the key, or unknown if COMMIT got no reply
            logger.exception("The transaction of a request failed to commit: %s", error)
            self.rollback()
            unknown = isinstance(error, OutcomeUnknownError)  # its COMMIT got no reply
            return store_unavailable(self.settings, commit_unknown=unknown)
        finish("released" if outcome is None else "stored")
        return None

    def rollback(self) -> None:
        """Roll back the claim and the writes; a failure is logged, never raised."""
        finish("released")
        self._rollback()

    def _rollback(self) -> None:
        with ShieldCancellation(CLEANUP_SECONDS):
            try:
                self._end(None)
            except Exception:
                logger.exception("Rolling back a transactional request failed")

    def _end(self, outcome: bytes | None) -> None:
        """Store `outcome` and commit; None rolls back instead."""
        tx = self._tx
        if tx is None:
            if outcome is not None:
                check_not_aborted(self._backend)  # else its COMMIT would silently commit nothing
            self._backend.end(commit=outcome is not None)
        elif outcome is None:
            tx.__exit__(RolledBack, RolledBack(), None)
        else:
            tx.complete(outcome)
            tx.__exit__(None, None, None)


def load_scope_secret(
    connection: Connection, table: str, encryption: Keyring | None = None
) -> tuple[bytes, bool]:
    """Return the scope secret kept in the records table, creating it there if absent (B8),
    and whether it is known to be committed (see `load_secret_of`)."""
    return load_secret_of(encrypting(sync_backend(connection, table), encryption))


def load_secret_of(backend: Backend) -> tuple[bytes, bool]:
    """Return the scope secret kept in `backend`'s records table, creating it if absent (B8),
    and whether it is known to be committed: only then may a process keep it for later
    requests.

    The same record the idempotency store keeps (`retrysafe._flow.secret`), read or inserted in
    a transaction of its own, so the middleware and transactional mode on one table scope
    requests alike; read and stored in the table behind an encrypted backend, as an encrypted
    store reads it (`open_secret`: one stored in clear before encryption was turned on is used
    as it is, a new one is stored sealed). Inside a
    transaction the caller already opened (Django's `ATOMIC_REQUESTS`, a session in use), it
    is a savepoint of that transaction: a secret created there commits or rolls back with it,
    and is not known committed here (a secret another transaction committed is; one this
    process made is known committed once read outside a transaction, and Django's face keeps
    it when the request's block commits). Kept after a rollback, it would scope this process's
    requests apart from every other's, and their retries would run again.
    """
    enclosed = backend.in_transaction()
    stored, keyring = behind_encryption(backend)
    tx = Transaction(
        stored,
        identity=SECRET_IDENTITY,
        fingerprint=SECRET_FINGERPRINT,
        retention=SECRET_RETENTION,
    )
    with tx:
        if tx.replay and tx.outcome:
            secret = open_secret(tx.outcome, keyring)
            # Read in the caller's transaction, it may be this process's own uncommitted write.
            committed = not enclosed or secret not in _UNSETTLED
            if committed:
                _UNSETTLED.discard(secret)
            return secret, committed
        secret = secrets.token_bytes(32)
        tx.complete(secret if keyring is None else keyring.seal(SECRET_IDENTITY, secret))
    if enclosed:
        _UNSETTLED.add(secret)
    return secret, not enclosed


_UNSETTLED: set[bytes] = set()
"""Secrets this process created inside a caller's open transaction, not yet read committed."""
