"""What transactional mode on a SQL driver's own connection shares, whatever the database.

psycopg (`psycopg.py`) and the MySQL drivers (`mysql.py`) run a transaction's record statements
the same way: the store's own primitives, on the caller's connection, each inside the driver's
error translation; and they check the records table once per process, not per transaction.
`AsyncDriverRecords` holds that, and a driver's subclass says what differs:

- `driver_error`, `_translate`, `_lock_wait_timed_out` and `_table_missing`: which of the
  driver's errors are translated, and into what (a claim's lock wait that timed out:
  `InFlightError`; a missing table is also forgotten as ready);
- `_store_claim`: the store's claim as a transaction runs it;
- `_address`: the server and database the connection is on;
- `commits_on_ddl` and `_creation_refusal`: where `CREATE TABLE` commits the open transaction
  (MySQL), a missing table is created only while none is open, and is remembered at once;
- `_found_committed`: whether a table found now is known committed (PostgreSQL: the open
  transaction has written nothing yet, so it did not create it).

`AsyncDriverBackend` adds what their transaction control shares: the table is prepared inside
what `begin` opened, which is rolled back if that fails; a failed commit is raised as our error
(`commit_failed`): rolled back if the database refused it, of unknown outcome if the
connection was lost before its reply.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeVar

from retrysafe._errors import ConfigurationError, InFlightError, OutcomeUnknownError, StoreError
from retrysafe._record import Claim, Identity, Record
from retrysafe.transactions import _drivers as drivers

if TYPE_CHECKING:
    from retrysafe.stores._async import mysql_records, postgres_records

__all__ = ["AsyncDriverBackend", "AsyncDriverRecords", "commit_failed", "reply_lost"]

# Tables known to exist, by (host, port, database, table): checked once per process, not per
# transaction. A table is remembered only once known committed: created where the DDL commits at
# once (MySQL), or found by a transaction that cannot have created it (`_found_committed`). One
# created or found inside a transaction that may still roll back (the caller's, with an earlier
# block's `CREATE TABLE` in it) is checked again next time. A statement that fails because the
# table is missing (dropped since) forgets it, so the next transaction prepares it again.
_ready_tables: set[tuple[str, ...]] = set()
# MySQL's client errors for a connection lost before the reply: gone away, lost during a query.
_LOST: Final = (2006, 2013)


# The driver's connection, as its subclass types it; the base only hands it to the primitives.
ConnectionT = TypeVar("ConnectionT", bound=Any)
# The primitives of the store whose table the driver's connection reaches.
PrimitivesT = TypeVar(
    "PrimitivesT", bound="postgres_records.AsyncPostgresRecords | mysql_records.AsyncMySQLRecords"
)
# The driver's root error.
ErrorT = TypeVar("ErrorT", bound=Exception)


class AsyncDriverRecords(Generic[ConnectionT, PrimitivesT, ErrorT]):
    """The store's record statements on a driver's connection inside a transaction.

    Args:
        connection: the caller's connection.
        primitives: the store's primitives on the records table.
    """

    driver_error: type[ErrorT]
    """The driver's root error: one raised by our statements is translated (`_translate`)."""

    commits_on_ddl: ClassVar[bool] = False
    """Whether `CREATE TABLE` commits the transaction open on the connection (MySQL)."""

    def __init__(self, connection: ConnectionT, primitives: PrimitivesT) -> None:
        self.connection = connection
        self._records = primitives
        self.table = primitives.table  # where the outbox finds the records table's name

    async def prepare(self) -> None:
        """Create the table if it is missing (where DDL commits, only while no transaction
        is open: inside one, a missing table is refused)."""
        key = self._ready_key()
        if key in _ready_tables:
            return
        refusal = self._creation_refusal()  # asked first: the check below may open a transaction
        with self._translated():
            if await self._records.exists(self.connection):
                if await self._found_committed():
                    _ready_tables.add(key)
                return
            if refusal is not None:
                raise ConfigurationError(refusal)
            await self._records.create_schema(self.connection)
        if self.commits_on_ddl:
            _ready_tables.add(key)  # the DDL committed: the table stays whatever happens next

    def aborted(self) -> bool:
        """Return whether the database aborted the open transaction: PostgreSQL does after a
        statement fails; MySQL fails only the statement (`_drivers.transaction_aborted`)."""
        return drivers.transaction_aborted(self.connection)

    async def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim, reading the record under the lock the claim took."""
        with self._translated(claiming=True):
            return await self._store_claim(
                identity, fingerprint, now=now, lease=lease, retention=retention
            )

    async def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome on the held record."""
        with self._translated():
            return await self._records.complete(
                self.connection, identity, token, outcome, now=now, retention=retention
            )

    async def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease, locking its row for the rest of the transaction."""
        with self._translated():
            return await self._records.renew(self.connection, identity, token, now=now, lease=lease)

    async def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase."""
        with self._translated():
            return await self._records.checkpoint(
                self.connection, identity, token, recovery_point, now=now
            )

    def _ready_key(self) -> tuple[str, ...]:
        """Return the records table's key in `_ready_tables`."""
        return (*self._address(), self.table.name)

    @contextlib.contextmanager
    def _translated(self, *, claiming: bool = False) -> Iterator[None]:
        """Re-raise a driver error on one of our statements as ours; while `claiming`, a lock
        wait that timed out is a wait on another transaction that holds the key. A missing
        table is forgotten as ready, so the next transaction prepares it again."""
        try:
            yield
        except self.driver_error as error:
            if self._table_missing(error):
                _ready_tables.discard(self._ready_key())
            if claiming and self._lock_wait_timed_out(error):
                raise InFlightError(
                    "A request is outstanding for this idempotency key (its transaction holds it)."
                ) from error
            raise self._translate(error) from error

    def _translate(self, error: ErrorT) -> Exception:
        """Return our error for the driver's `error`."""
        raise NotImplementedError

    def _lock_wait_timed_out(self, error: ErrorT) -> bool:
        """Return whether `error` ended a wait on a row lock (the database's lock timeout)."""
        raise NotImplementedError

    def _table_missing(self, error: ErrorT) -> bool:
        """Return whether `error` says that a table does not exist."""
        raise NotImplementedError

    async def _found_committed(self) -> bool:
        """Return whether a table that `exists` found now is known committed, not created in
        the open transaction (which may still roll back); where DDL commits, it always is."""
        return self.commits_on_ddl

    async def _store_claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim on the connection as of `now`, as a transaction must."""
        raise NotImplementedError

    def _address(self) -> tuple[str, ...]:
        """Return the connection's server and database, where the records table lives."""
        raise NotImplementedError

    def _creation_refusal(self) -> str | None:
        """Return why a missing table may not be created now, or None if it may."""
        return None


class AsyncDriverBackend:
    """What the drivers' transaction control shares, beside their records: the table is
    prepared inside what `begin` opened, and that is rolled back if preparing fails."""

    async def prepare(self) -> None:
        """Create the table if it is missing (`AsyncDriverRecords.prepare`)."""
        raise NotImplementedError

    async def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` opened."""
        raise NotImplementedError

    async def _prepare_opened(self) -> None:
        """Prepare the table inside what `begin` just opened; roll that back if it fails."""
        try:
            await self.prepare()
        except BaseException:
            await self.end(commit=False)
            raise


def commit_failed(error: Exception, driver_error: BaseException | None = None) -> Exception:
    """Return our error for a commit that failed (`error`, the store's), saying what became of
    the transaction: rolled back, with every write made in it, when the database refused the
    COMMIT; unknown when the connection was lost before its reply (`driver_error`, the
    driver's, says so): the server may have committed it, so only a retry with the same key
    can tell (it replays the outcome, or runs again)."""
    if not isinstance(error, StoreError):
        return error
    if driver_error is not None and reply_lost(driver_error):
        return OutcomeUnknownError(
            "The transaction's COMMIT got no reply (the connection was lost), so it may or may "
            "not have committed: retry with the same key, which replays the outcome if it "
            f"committed and runs again if not; never with a new key. {error}"
        )
    return type(error)(
        "The transaction could not commit, so it was rolled back with every write made in it: "
        f"nothing of it was applied. {error}"
    )


def reply_lost(error: BaseException) -> bool:
    """Return whether the driver's `error` is a connection lost before the server's reply:
    psycopg's `OperationalError` the server sent no SQLSTATE for, PyMySQL's and aiomysql's
    2006/2013 (gone away, lost during the query) or a closed connection."""
    psycopg = drivers.psycopg_module()
    if psycopg is not None and isinstance(error, psycopg.OperationalError):
        return error.sqlstate is None
    if type(error).__module__.startswith(("pymysql", "aiomysql")):
        number = error.args[0] if error.args else None
        return number in _LOST or type(error).__name__ == "InterfaceError"
    return False
