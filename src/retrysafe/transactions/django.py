"""Transactional mode on Django's ORM: the key's record commits with the view's writes (B29).

The record lives in the same database as the models (the store's own table) and is claimed
and completed on Django's connection for it, inside `transaction.atomic`: the ORM's writes and
the record commit together, or neither does. SQLite (`django.db.backends.sqlite3`),
PostgreSQL (`django.db.backends.postgresql` with psycopg 3), and MySQL or MariaDB
(`django.db.backends.mysql` with PyMySQL installed as `MySQLdb`).

A view, one decorator (the key, scope and response are the HTTP middleware's):

    from retrysafe.transactions.django import transactional

    @transactional(required=True)
    def create_payment(request, tx):
        payment = Payment.objects.create(customer=..., amount=...)
        return JsonResponse({"id": payment.pk}, status=201)

A unit of work, anywhere (a task, a command, a view that reads its own key):

    from retrysafe.transactions import django as idempotent

    with idempotent.atomic(identity=Identity("payments", tenant, key), fingerprint=fp) as tx:
        if tx.replay:
            return json.loads(tx.outcome)
        payment = Payment.objects.create(...)
        tx.complete(json.dumps({"id": payment.pk}).encode())

Inside the view's own `transaction.atomic()` (or `ATOMIC_REQUESTS`), both run in a savepoint
and the record commits when the view's transaction does. Atomic phases (`run_phases`) and the
idempotent write helpers (`insert_if_absent`, `update_by_key`, `delete_by_key`) take the same
`using=`. Sync only: Django's transactions are (an async view calls these through
`sync_to_async`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Unpack

from retrysafe._encryption import Keyring
from retrysafe.integrations import _django_config as django_config
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions import writes
from retrysafe.transactions._django import DjangoBackend, driver_connection, table_of
from retrysafe.transactions._django_phases import run_django_phases
from retrysafe.transactions._django_web import transactional
from retrysafe.transactions._state import ClaimOptions
from retrysafe.transactions._steps import PhaseFunction, PhasesResult, Step
from retrysafe.transactions._sync.encrypted import EncryptedBackend
from retrysafe.transactions._sync.transaction import Backend, Transaction
from retrysafe.transactions._web import RequestTransaction
from retrysafe.transactions._write_sql import Inserted, Row

__all__ = [
    "Inserted",
    "PhasesResult",
    "RequestTransaction",
    "Step",
    "Transaction",
    "atomic",
    "delete_by_key",
    "insert_if_absent",
    "run_phases",
    "transactional",
    "update_by_key",
]


def atomic(
    *,
    using: str | None = None,
    table: str = DEFAULT_TABLE,
    encryption: Keyring | None = None,
    **options: Unpack[ClaimOptions],
) -> Transaction:
    """Return a transaction on Django's connection in which the key commits with the writes.

    The block runs in `transaction.atomic(using=using)`: committed when the block ends, or a
    savepoint that commits with the view's transaction when one is open. Entering claims the
    key; a finished key makes `tx.replay` true and `tx.outcome` its stored bytes (anything the
    block writes is then rolled back). Leaving stores the outcome given to `tx.complete` and
    commits; an exception rolls back the claim with the writes.

    Args:
        using: the database alias (default: `"default"`).
        table: the records table, the store's `table` option (default `retrysafe_records`);
            created if missing.
        encryption: the keys that encrypt the outcome at rest (docs/encryption.md); default
            `RETRYSAFE["ENCRYPTION"]`, if set.
        options: the claim: `identity` (the key's namespace, scope and key) and `fingerprint`
            (a digest of the request), and optionally `lease`, `retention` and `clock`, as for
            `retrysafe.transactions.sqlite`.
    """
    return Transaction(_backend(using, table, encryption), **options)


def run_phases(
    phases: Mapping[str, PhaseFunction],
    *,
    using: str | None = None,
    table: str = DEFAULT_TABLE,
    encryption: Keyring | None = None,
    **options: Unpack[ClaimOptions],
) -> PhasesResult:
    """Run an operation as atomic phases on Django's connection, each in an atomic block.

    As `retrysafe.transactions.run_phases`: the claim commits in flight, then each phase's
    writes (ORM or SQL) commit with its recovery point; a retry resumes after the last
    committed phase. Call it outside any atomic block, since each phase commits on its own.

    Args:
        phases: phase name to function, in order (see `retrysafe.transactions.run_phases`).
        using: the database alias (default: `"default"`).
        table: the records table.
        encryption: the keys that encrypt the outcome at rest, as for `atomic`.
        options: the claim's `identity`, `fingerprint`, `lease`, `retention` and `clock`.
    """
    return run_django_phases(_backend(using, table, encryption), phases, **options)


def _backend(using: str | None, table: str, encryption: Keyring | None) -> Backend:
    """Django's backend for the alias, behind encryption when keys are given or configured."""
    backend = DjangoBackend(using, table)
    keyring = encryption if encryption is not None else django_config.encryption_from_django()
    return backend if keyring is None else EncryptedBackend(backend, keyring)


def insert_if_absent(
    table: str | type,
    values: Mapping[str, object],
    *,
    unique: Sequence[str],
    using: str | None = None,
) -> Inserted:
    """Insert a row unless one with the same `unique` columns exists; return the row there.

    As `retrysafe.transactions.insert_if_absent`, on Django's connection, in its open
    transaction. `table` is a table name or a model class; `values` are keyed by column name
    (a foreign key's column is `<field>_id`).
    """
    return writes.insert_if_absent(driver_connection(using), table_of(table), values, unique=unique)


def update_by_key(
    table: str | type,
    key: Mapping[str, object],
    values: Mapping[str, object],
    *,
    using: str | None = None,
) -> Row | None:
    """Set columns on the one row `key` names; return it, or None if there is none."""
    return writes.update_by_key(driver_connection(using), table_of(table), key, values)


def delete_by_key(
    table: str | type, key: Mapping[str, object], *, using: str | None = None
) -> bool:
    """Delete the row `key` names; return whether there was one."""
    return writes.delete_by_key(driver_connection(using), table_of(table), key)
