"""What the transactional ASGI middleware and the Flask decorator share.

Both follow the HTTP middleware's flow (`retrysafe._http`: key parsing, scope, fingerprint,
outcome codec, problems), with one difference: the claim, the handler's writes and the stored
response commit in one database transaction on the handler's own connection, and the response
is sent only after that commit. A failed commit rolls the writes back and answers 503, so the
client retries; the HTTP middleware would answer with the handler's response instead (B19),
which here would announce writes that never committed.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio.to_thread

from retrysafe._clock import Clock
from retrysafe._errors import InFlightError, KeyMismatchError, StoreError
from retrysafe._http import (
    Header,
    Response,
    ResponseCapture,
    Settings,
    in_flight,
    mismatch,
    outcome_to_store,
    store_unavailable,
)
from retrysafe._record import Identity, Record
from retrysafe.transactions._core import AsyncBackend, AsyncTransaction, Transaction
from retrysafe.transactions._open import async_backend, sync_backend

__all__ = [
    "TRANSACTION_KEY",
    "AsyncWorkUnit",
    "RequestTransaction",
    "RolledBack",
    "WorkUnit",
    "is_async_connection",
    "is_connection",
    "outcome_of",
    "refused",
    "transaction_for",
]

C = TypeVar("C")

TRANSACTION_KEY = "retrysafe.transaction"
"""Where the request's `RequestTransaction` is kept: an ASGI scope key, a WSGI environ key."""


@dataclass(frozen=True, slots=True)
class RequestTransaction(Generic[C]):
    """The transaction a handler's writes commit in, together with the request's key.

    Attributes:
        connection: the session or connection to write with (as `connect` made it); its
            transaction commits when the response is ready, before it is sent.
        identity: the key's (namespace, scope, key); None for a request without a key, whose
            writes commit in a plain transaction.
        record: the key's record as claimed; None without a key.
    """

    connection: C
    identity: Identity | None = None
    record: Record | None = None

    @property
    def key(self) -> str | None:
        """The request's idempotency key, if it has one."""
        return None if self.identity is None else self.identity.key


class RolledBack(Exception):  # noqa: N818 - a signal to roll back, not an error
    """Passed to a transaction's exit to roll it back without an error of the handler."""


def is_async_connection(connection: object) -> bool:
    """Return whether `connection` is a psycopg `AsyncConnection` or an `AsyncSession`."""
    driver = sys.modules.get("psycopg")
    if driver is not None and isinstance(connection, driver.AsyncConnection):
        return True
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    return asyncio_ext is not None and isinstance(connection, asyncio_ext.AsyncSession)


def is_connection(connection: object) -> bool:
    """Return whether `connection` is one that transactional mode drives."""
    if isinstance(connection, sqlite3.Connection) or is_async_connection(connection):
        return True
    driver = sys.modules.get("psycopg")
    if driver is not None and isinstance(connection, driver.Connection):
        return True
    orm = sys.modules.get("sqlalchemy.orm")
    return orm is not None and isinstance(connection, orm.Session)


def transaction_for(
    connection: object,
    *,
    identity: Identity | None,
    fingerprint: str,
    settings: Settings,
    table: str,
    clock: Clock | None,
) -> Transaction | AsyncTransaction | None:
    """Return the transaction that claims `identity` on `connection`, or None without a key."""
    if identity is None:
        return None
    if is_async_connection(connection):
        return AsyncTransaction(
            async_backend(connection, table),  # type: ignore[arg-type]
            identity=identity,
            fingerprint=fingerprint,
            lease=settings.lease,
            retention=settings.retention,
            clock=clock,
        )
    return Transaction(
        sync_backend(connection, table),  # type: ignore[arg-type]
        identity=identity,
        fingerprint=fingerprint,
        lease=settings.lease,
        retention=settings.retention,
        clock=clock,
    )


def refused(error: Exception, settings: Settings) -> Response | None:
    """Return the problem response for an error of the claim, or None if it is not one."""
    if isinstance(error, KeyMismatchError):
        return mismatch(settings)
    if isinstance(error, InFlightError):
        return in_flight(settings)
    if isinstance(error, StoreError):
        return store_unavailable(settings)
    return None


def outcome_of(
    status: int, headers: Sequence[Header], body: bytes, settings: Settings
) -> bytes | None:
    """Return the outcome to store for a complete response, or None to roll back (B18)."""
    capture = ResponseCapture(settings.max_response_size)
    capture.start(status, headers)
    capture.add(body)
    capture.complete = True
    return outcome_to_store(capture, settings)


class WorkUnit:
    """One request's work on a sync connection: a claim transaction, or a plain one.

    A request with a key runs in transactional mode; one without (an optional key that was not
    sent, a method the route does not cover) still gets its writes committed together, in a
    plain transaction, by the same outcome policy.
    """

    def __init__(
        self,
        connection: object,
        *,
        identity: Identity | None,
        fingerprint: str,
        settings: Settings,
        table: str,
        clock: Clock | None,
    ) -> None:
        tx = transaction_for(
            connection,
            identity=identity,
            fingerprint=fingerprint,
            settings=settings,
            table=table,
            clock=clock,
        )
        if isinstance(tx, AsyncTransaction):
            raise TypeError("A sync work unit needs a sync connection.")
        self.tx = tx
        self.backend = sync_backend(connection, table) if tx is None else None  # type: ignore[arg-type]

    @property
    def record(self) -> Record | None:
        """The claimed or replayed record; None without a key."""
        return None if self.tx is None else self.tx.record

    @property
    def replay(self) -> bool:
        """Whether the key has a stored outcome to replay."""
        return self.tx is not None and self.tx.replay

    def begin(self) -> None:
        """Begin the transaction and claim the key (refusals raise, see `refused`)."""
        if self.tx is not None:
            self.tx.__enter__()
        elif self.backend is not None:
            self.backend.begin()

    def commit(self, outcome: bytes | None) -> None:
        """Store `outcome` and commit; None rolls back instead."""
        if outcome is None:
            self.rollback()
        elif self.tx is not None:
            self.tx.complete(outcome)
            self.tx.__exit__(None, None, None)
        elif self.backend is not None:
            self.backend.end(commit=True)

    def rollback(self) -> None:
        """Roll back the claim and the writes."""
        if self.tx is not None:
            self.tx.__exit__(RolledBack, RolledBack(), None)
        elif self.backend is not None:
            self.backend.end(commit=False)


class AsyncWorkUnit:
    """The async twin of `WorkUnit`; a sync connection's work runs in worker threads."""

    def __init__(
        self,
        connection: object,
        *,
        identity: Identity | None,
        fingerprint: str,
        settings: Settings,
        table: str,
        clock: Clock | None,
    ) -> None:
        self._sync: WorkUnit | None = None
        self.tx: AsyncTransaction | None = None
        self.backend: AsyncBackend | None = None
        if not is_async_connection(connection):
            self._sync = WorkUnit(
                connection,
                identity=identity,
                fingerprint=fingerprint,
                settings=settings,
                table=table,
                clock=clock,
            )
            return
        tx = transaction_for(
            connection,
            identity=identity,
            fingerprint=fingerprint,
            settings=settings,
            table=table,
            clock=clock,
        )
        if isinstance(tx, Transaction):  # pragma: no cover - an async connection gives async
            raise TypeError("An async connection gave a sync transaction.")
        self.tx = tx
        if tx is None:
            self.backend = async_backend(connection, table)  # type: ignore[arg-type]

    @property
    def record(self) -> Record | None:
        """The claimed or replayed record; None without a key."""
        if self._sync is not None:
            return self._sync.record
        return None if self.tx is None else self.tx.record

    @property
    def replay(self) -> bool:
        """Whether the key has a stored outcome to replay."""
        if self._sync is not None:
            return self._sync.replay
        return self.tx is not None and self.tx.replay

    async def begin(self) -> None:
        """Begin the transaction and claim the key (refusals raise, see `refused`)."""
        if self._sync is not None:
            await anyio.to_thread.run_sync(self._sync.begin)
        elif self.tx is not None:
            await self.tx.__aenter__()
        elif self.backend is not None:
            await self.backend.begin()

    async def commit(self, outcome: bytes | None) -> None:
        """Store `outcome` and commit; None rolls back instead."""
        if self._sync is not None:
            await anyio.to_thread.run_sync(self._sync.commit, outcome)
        elif outcome is None:
            await self.rollback()
        elif self.tx is not None:
            self.tx.complete(outcome)
            await self.tx.__aexit__(None, None, None)
        elif self.backend is not None:
            await self.backend.end(commit=True)

    async def rollback(self) -> None:
        """Roll back the claim and the writes."""
        if self._sync is not None:
            await anyio.to_thread.run_sync(self._sync.rollback)
        elif self.tx is not None:
            await self.tx.__aexit__(RolledBack, RolledBack(), None)
        elif self.backend is not None:
            await self.backend.end(commit=False)
