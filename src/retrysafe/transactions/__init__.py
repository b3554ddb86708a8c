"""Transactional mode: idempotency records that commit with the business writes (B29-B31).

An idempotency key kept in one system (Redis) beside writes in another (PostgreSQL) cannot be
exactly-once: a crash between the two loses or repeats one of them. Here the key's record lives
in the same SQL database as the writes (the store's own table) and commits in the same
transaction, so a crash leaves both or neither. See docs/transactions.md.

Transactional mode, one transaction per operation:

    from retrysafe import Identity, transactions

    identity = Identity("payments", tenant, key)
    with transactions.sqlite(conn, identity=identity, fingerprint=fp) as tx:
        if tx.replay:
            return tx.outcome
        conn.execute("INSERT INTO payments ...")
        tx.complete(body)

    transactions.sqlite(connection, ...)       sqlite3                      -> Transaction
    transactions.psycopg(connection, ...)      psycopg Connection           -> Transaction
                                               psycopg AsyncConnection      -> AsyncTransaction
    transactions.mysql(connection, ...)        PyMySQL Connection           -> Transaction
                                               aiomysql Connection          -> AsyncTransaction
    transactions.sqlalchemy(session, ...)      Session                      -> Transaction
                                               AsyncSession                 -> AsyncTransaction

Atomic phases, for operations that call other systems: `run_phases` / `arun_phases`, with
`Step.foreign_key()` for each foreign call (`retrysafe.transactions.phases`).

Idempotent writes: `insert_if_absent`, `update_by_key`, `delete_by_key` and their `a` twins
(`retrysafe.transactions.writes`).

A block (or a web handler, a versioned consumer's handler, a phase) that catches a database
error and goes on, its transaction aborted (PostgreSQL; a failed SQLAlchemy flush or Django ORM
write, anywhere), raises `TransactionAbortedError` (an `OutcomeError`): nothing was applied.

In web handlers, the response commits with the writes: `retrysafe.transactions.fastapi`
(`install` and a `Transactional` parameter), `retrysafe.transactions.flask` (`install` and
`@transactional`), `retrysafe.transactions.asgi.TransactionalMiddleware` for any ASGI app.
"""

from __future__ import annotations

from retrysafe.transactions._core import AsyncTransaction, Transaction
from retrysafe.transactions._open import mysql, psycopg, sqlalchemy, sqlite
from retrysafe.transactions._state import TransactionAbortedError
from retrysafe.transactions.phases import (
    PhasesResult,
    Step,
    arun_phases,
    foreign_key,
    run_phases,
)
from retrysafe.transactions.writes import (
    Inserted,
    adelete_by_key,
    ainsert_if_absent,
    aupdate_by_key,
    delete_by_key,
    insert_if_absent,
    update_by_key,
)

# Named where it is imported from, as `retrysafe`'s errors are: tracebacks and pickles say so.
TransactionAbortedError.__module__ = __name__

__all__ = [
    "AsyncTransaction",
    "Inserted",
    "PhasesResult",
    "Step",
    "Transaction",
    "TransactionAbortedError",
    "adelete_by_key",
    "ainsert_if_absent",
    "arun_phases",
    "aupdate_by_key",
    "delete_by_key",
    "foreign_key",
    "insert_if_absent",
    "mysql",
    "psycopg",
    "run_phases",
    "sqlalchemy",
    "sqlite",
    "update_by_key",
]
