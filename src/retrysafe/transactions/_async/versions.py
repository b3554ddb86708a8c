"""Where versioned consumers keep the last applied version of each entity, and apply a message
only if its version is newer.

Two places, one method: `apply(scope, entity, version, effect)` runs `effect` only for a newer
version, and returns `(True, its value)`, or `(False, None)` for an older or equal one.

- `AsyncStoreVersions`, on any store: each entity has one record, in flight under an expired
  lease between messages, whose recovery point is the last applied version. A delivery claims
  it (the store's atomic claim, with a fencing token), compares, runs the effect under a
  renewed lease, checkpoints the new version with its token (the compare-and-set), then lets
  the lease lapse at once (`renew(lease=0)`). Deliveries of one entity therefore run one at a
  time, and a version is recorded only by the holder that applied it.
- `AsyncSQLVersions`, on the caller's database connection: the compare-and-set is one
  `INSERT ... ON CONFLICT DO UPDATE ... WHERE version < excluded.version` in the same
  transaction as the effect's writes, so both commit or neither does. An effect that returns
  from a transaction the database aborted (it caught a database error) has applied nothing,
  its version included: that raises `TransactionAbortedError`, never counts as applied.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Protocol, TypeVar

from retrysafe._concurrency import asleep, monotonic
from retrysafe._errors import FencedError, InFlightError, StoreError
from retrysafe._record import Identity
from retrysafe._versions import (
    LOCK_FINGERPRINT,
    AsyncEffect,
    AsyncHeartbeat,
    AsyncTransactionContext,
    is_newer,
    legacy_copy,
    legacy_keys,
    refused_key,
    row_entity,
    statements,
    version_of_point,
)
from retrysafe.stores.base import AsyncStore, poll_delays
from retrysafe.transactions import _drivers as drivers
from retrysafe.transactions._state import TRANSACTION_ABORTED, TransactionAbortedError

__all__ = ["AsyncSQLConnection", "AsyncSQLVersions", "AsyncStoreVersions"]

T = TypeVar("T")

_LOGGER = logging.getLogger("retrysafe.consumers")


class AsyncStoreVersions:
    """The last applied version of each entity, in a store.

    Args:
        store: any store.
        namespace: the namespace of the entities' records (not the messages' ids).
        lease: seconds a delivery holds its entity unless its heartbeat renews it.
        retention: seconds an entity's version is remembered after its last delivery.
        wait: seconds a delivery waits for another delivery of its entity to finish.
    """

    def __init__(
        self, store: AsyncStore, namespace: str, *, lease: float, retention: float, wait: float
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.lease, self.retention, self.wait = lease, retention, wait

    async def apply(
        self, scope: str, entity: str, version: int, effect: AsyncEffect[T]
    ) -> tuple[bool, T | None]:
        """Run `effect` if `version` is newer than the entity's; record it once it returned."""
        identity = Identity(self.namespace, scope, entity)
        token, applied = await self._hold(identity)
        try:
            if not is_newer(version, applied):
                return False, None
            beat = AsyncHeartbeat(functools.partial(self._renew, identity, token), self.lease / 3)
            await beat.start()
            try:
                value = await effect()
                # The effect happened: from here on nothing raises, or the message's claim
                # would be released and its redelivery run the effect again (B19, B28).
                token = await self._record(identity, token, version)
            finally:
                await beat.stop()
            return True, value
        finally:
            with contextlib.suppress(FencedError, StoreError):  # the lease then lapses by itself
                await self.store.renew(identity, token, lease=0)

    async def _record(self, identity: Identity, token: str, version: int) -> str:
        """Record `version` as the entity's last applied one, trying again for up to `wait`
        seconds while the store is unreachable (the heartbeat keeps the entity held), and
        claiming the entity again if its lease lapsed meanwhile; return the token it is held
        under. What cannot be recorded is logged, not raised: the message's own outcome is
        stored (or held, B19), so it is never applied again; only an older version of its
        entity could still be, until a newer one is recorded."""
        deadline = monotonic() + self.wait
        delays = poll_delays()
        while True:
            try:
                await self.store.checkpoint(identity, token, str(version))
            except FencedError:  # the lease lapsed during an outage: hold the entity again
                with contextlib.suppress(StoreError, InFlightError):
                    token, applied = await self._hold(identity)
                    if not is_newer(version, applied):
                        return token  # a newer version was recorded meanwhile
                    continue
            except StoreError:
                pass
            else:
                return token
            remaining = deadline - monotonic()
            if remaining <= 0:
                _LOGGER.error(
                    "Applied version %s of entity %r in %s, but could not record it; an older "
                    "version of the entity could still be applied until a newer one is recorded",
                    version, identity.key, identity.namespace,
                )  # fmt: skip
                return token
            await asleep(min(next(delays), remaining))

    async def _hold(self, identity: Identity) -> tuple[str, int | None]:
        """Claim the entity's record, waiting up to `wait` for another delivery of it."""
        deadline = monotonic() + self.wait
        delays = poll_delays()
        while True:
            claim = await self.store.claim(
                identity, LOCK_FINGERPRINT, lease=self.lease, retention=self.retention
            )
            if claim.acquired:
                return claim.record.token, version_of_point(claim.record.recovery_point)
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise InFlightError(
                    f"Another delivery of entity {identity.key!r} in {identity.namespace} is "
                    "being applied: requeue this one."
                )
            await asleep(min(next(delays), remaining))

    async def _renew(self, identity: Identity, token: str) -> bool:
        """Renew the entity's lease; False once another delivery took it over."""
        try:
            await self.store.renew(identity, token, lease=self.lease)
        except FencedError:
            return False
        except StoreError:
            return True  # try again at the next beat
        return True


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int:
        """How many rows the statement changed."""
        ...


class AsyncSQLConnection(Protocol):
    """What `AsyncSQLVersions` needs of a connection: psycopg's `transaction` and `execute`."""

    def transaction(self) -> AsyncTransactionContext:
        """Open a transaction (or a savepoint inside one); commit it on exit."""
        ...

    async def execute(self, query: str, params: Sequence[object] = ()) -> _Cursor:
        """Run one statement."""
        ...


class AsyncSQLVersions:
    """The last applied version of each entity, in a table beside the effect's own rows.

    Args:
        connection: the connection the effect writes with.
        namespace: what separates this consumer's entities from other consumers'.
        table: the versions table, created if missing.
        mark: the driver's placeholder (`%s` for psycopg, `?` for sqlite3).
        legacy: look for scoped rows of earlier releases (`scope` NUL `entity`): on SQLite,
            the only database that could store them.
    """

    def __init__(
        self,
        connection: AsyncSQLConnection,
        namespace: str,
        *,
        table: str,
        mark: str,
        legacy: bool = False,
    ) -> None:
        self.connection = connection
        self.namespace = namespace
        self._create, self._upsert = statements(table, mark)
        self._legacy = legacy_copy(table, mark) if legacy else None
        self.prepared = False
        """Whether the table is known to exist: set by the first delivery, or by the caller."""

    async def apply(
        self,
        scope: str,
        entity: str,
        version: int,
        effect: AsyncEffect[T],
        *,
        former_scope: str | None = None,
    ) -> tuple[bool, T | None]:
        """Run `effect` in the version's transaction if it is newer; commit both, or neither.
        `former_scope`: the scope as earlier releases wrote it, where it differs (a bytes one).

        Raises:
            InvalidKeyError: the scope or entity id cannot be kept in the table (`row_entity`),
                before any statement runs; or the database's index cannot hold them (too long
                for PostgreSQL's), the transaction rolled back.
            TransactionAbortedError: the effect returned from a transaction the database
                aborted (PostgreSQL, after a statement failed): it was rolled back, the version
                with it, where leaving it would have committed nothing and said nothing.
        """
        entity_key = row_entity(scope, entity)
        if not self.prepared:
            await self._prepare()
        async with self.connection.transaction():
            if scope and self._legacy is not None:
                old_keys = legacy_keys(scope, former_scope or scope, entity)
                await self.connection.execute(self._legacy, (entity_key, self.namespace, *old_keys))
            try:
                cursor = await self.connection.execute(
                    self._upsert, (self.namespace, entity_key, version)
                )
            except Exception as error:
                refused = refused_key(error, entity_key)
                if refused is None:
                    raise
                raise refused from error  # the block rolls back
            if cursor.rowcount != 1:
                return False, None  # an older or equal version: nothing was written
            value = await effect()
            if drivers.transaction_aborted(self.connection):
                raise TransactionAbortedError(TRANSACTION_ABORTED)  # the block rolls back
            return True, value

    async def _prepare(self) -> None:
        """Create the table if it is missing (a second try if a concurrent consumer raced us)."""
        for attempt in (1, 2):
            try:
                async with self.connection.transaction():
                    await self.connection.execute(self._create)
            except Exception:
                if attempt == 2:
                    raise
            else:
                self.prepared = True
                return
