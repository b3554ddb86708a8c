"""The registry of resumable operations: how an operation's phases are built from its request.

The application registers, per namespace, a function that builds the phases of one operation
from the request it stored and the connection the phases write on, and runs its operations
through the registry (`Registry.run`), which stores the request in the claim's transaction. The
completer finds the request there when the client is gone, and builds the same phases again.
With keys (`encryption=`), the outcome and the stored request are sealed at rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from retrysafe._clock import Clock
from retrysafe._encryption import Keyring
from retrysafe._errors import ConfigurationError
from retrysafe._record import Identity
from retrysafe.completer._backend import ClientRun, CompleterRun, ResumableBackend
from retrysafe.completer._sealing import RowSealing
from retrysafe.completer._table import Dialect, ResumableTable
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.stores._sql.postgres_deadline import ReadDeadline
from retrysafe.transactions import _drivers as drivers
from retrysafe.transactions._dispatch import sync_backend
from retrysafe.transactions._state import DEFAULT_LEASE, DEFAULT_RETENTION, check_keyring
from retrysafe.transactions._steps import PhaseFunction, PhasesResult
from retrysafe.transactions._sync.encrypted import EncryptedBackend
from retrysafe.transactions._sync.phases import run_phases_on
from retrysafe.transactions._sync.transaction import Backend

__all__ = ["Operation", "Registry", "dialect_of", "request_fingerprint", "resumable_backend"]

Operation = Callable[[bytes, Any], Mapping[str, PhaseFunction]]
"""Builds one operation's phases from its stored request and the connection they write on."""
OperationT = TypeVar("OperationT", bound=Operation)


def dialect_of(connection: object) -> Dialect:
    """Return which database `connection` is on; refuse any other driver."""
    if drivers.is_sqlite_connection(connection):
        return "sqlite"
    if drivers.is_psycopg_connection(connection):
        return "postgresql"
    raise TypeError(
        f"Resumable operations run on a sqlite3.Connection or a psycopg Connection, "
        f"not {connection!r}."
    )


def resumable_backend(
    connection: object,
    table: str,
    run: ClientRun | CompleterRun,
    encryption: Keyring | None = None,
    deadline: ReadDeadline | None = None,
) -> ResumableBackend:
    """Return the backend that runs a registered operation's phases on `connection`, sealing
    the outcome and the stored request with `encryption` when keys are given, and bounding
    its own statements with `deadline` (PostgreSQL's read deadline) when one is given."""
    side = ResumableTable(connection, table, dialect_of(connection))
    backend: Backend = sync_backend(connection, table)  # type: ignore[arg-type]
    if encryption is not None:
        backend = EncryptedBackend(backend, encryption)
    return ResumableBackend(backend, side, run, RowSealing(encryption), deadline)


def request_fingerprint(request: bytes) -> str:
    """Return the default fingerprint of a stored request: a digest of its bytes."""
    return f"request-sha256:{hashlib.sha256(request).hexdigest()}"


class Registry:
    """Resumable operations by namespace, run by the application and by the completer.

        registry = Registry()

        @registry.operation("rides")
        def ride(request: bytes, connection) -> dict[str, PhaseFunction]:
            order = json.loads(request)
            return {"reserve": ..., "charge": ..., "finish": ...}

        result = registry.run(conn, Identity("rides", user, key), body)

    A builder is called again for every run (the client's, each retry, the completer's): it
    must build the same phases from the same request, and its phases must read what earlier
    phases wrote from the database, since a run may resume after any of them.
    """

    def __init__(self) -> None:
        self._operations: dict[str, Operation] = {}

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The namespaces of the registered operations, sorted."""
        return tuple(sorted(self._operations))

    def operation(self, namespace: str) -> Callable[[OperationT], OperationT]:
        """Register the decorated function as the builder of `namespace`'s operations."""
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"A namespace is a non-empty str, not {namespace!r}.")

        def register(function: OperationT) -> OperationT:
            if namespace in self._operations:
                raise ConfigurationError(f"Namespace {namespace!r} has an operation already.")
            if not callable(function):
                raise ConfigurationError(f"The operation of {namespace!r} is not callable.")
            self._operations[namespace] = function
            return function

        return register

    def build(self, namespace: str, request: bytes, connection: object) -> Mapping[str, Any]:
        """Return the phases of one operation of `namespace` from its `request`."""
        operation = self._operations.get(namespace)
        if operation is None:
            known = ", ".join(map(repr, self.namespaces)) or "none"
            raise ConfigurationError(
                f"No operation is registered for namespace {namespace!r} (registered: {known})."
            )
        return operation(request, connection)

    def run(
        self,
        connection: object,
        identity: Identity,
        request: bytes,
        *,
        fingerprint: str | None = None,
        table: str = DEFAULT_TABLE,
        lease: float = DEFAULT_LEASE,
        retention: float = DEFAULT_RETENTION,
        clock: Clock | None = None,
        encryption: Keyring | None = None,
    ) -> PhasesResult:
        """Run one operation as atomic phases, its request stored for the completer.

        The operation is the one registered for `identity.namespace`. The claim's transaction
        stores `request` next to the record; the transaction that stores the outcome deletes
        it. A retry with the same key resumes after the last committed phase, as with
        `run_phases`; if no client retries, a completer does.

        Args:
            connection: a `sqlite3.Connection` or a psycopg `Connection`, with no transaction
                open.
            identity: the key's (namespace, scope, key); the namespace names the operation.
            request: what the builder needs to build the phases again, as bytes.
            fingerprint: what makes a repeat the same request (default: a digest of `request`).
            table: the records table (the store's `table` option).
            lease: seconds the operation holds its key between phases; a completer takes
                it over once the lease has expired.
            retention: seconds the outcome is kept and replayed.
            clock: the time source (default: the system clock).
            encryption: the keys that encrypt the outcome and the stored request at rest,
                those of the store that shares the table and of the completer
                (docs/encryption.md); default none.

        Raises:
            ConfigurationError: `encryption` is not a `Keyring`.
            KeyMismatchError: the key was used with another request.
            InFlightError: a live holder (another client, a completer) is running it.
            FencedError: the operation was taken over while this run was between phases.
        """
        if not isinstance(request, bytes | bytearray | memoryview):
            raise TypeError(f"A stored request is bytes, not {type(request).__name__}.")
        request = bytes(request)
        keyring = check_keyring(encryption)
        phases = self.build(identity.namespace, request, connection)
        backend = resumable_backend(connection, table, ClientRun(request), keyring)
        return run_phases_on(
            backend,
            phases,
            identity=identity,
            fingerprint=request_fingerprint(request) if fingerprint is None else fingerprint,
            lease=lease,
            retention=retention,
            clock=clock,
        )
