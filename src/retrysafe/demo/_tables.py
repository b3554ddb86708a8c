"""The demo payments API's own tables: payments and user profiles, behind `DemoDatabase`.

They live in the same SQL database as the idempotency store, under their own table names:
the same SQLite file for `sqlite:///...`, the same PostgreSQL database for `postgresql://...`,
the same MySQL or MariaDB database for `mysql://...`. Any other store (`memory://`,
`redis://...`) has no SQL database, so the demo tables go to an in-memory SQLite database that
lives as long as the process.

When the tables share the store's database, `DemoDatabase.transaction_connect` gives the
connections transactional mode writes payments with (`retrysafe.transactions.asgi`), so a
payment and its idempotency record commit in one transaction.

The calls are blocking (sqlite3, psycopg, PyMySQL); the API runs them in worker threads. The
rows and the SQL dialect are in `_schema`, the databases' connections in `_sqlite`, `_postgres`
and `_mysql`.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from retrysafe._errors import ConfigurationError
from retrysafe.demo._connections import Connection, Connections, TransactionConnect
from retrysafe.demo._mysql import open_mysql
from retrysafe.demo._postgres import open_postgres
from retrysafe.demo._schema import (
    DEFAULT_PREFIX,
    Payment,
    Tables,
    User,
    insert_payment,
    parse_time,
)
from retrysafe.demo._sqlite import open_sqlite
from retrysafe.stores._sql import DEFAULT_TABLE

__all__ = ["DemoDatabase", "sqlite_path"]


class DemoDatabase:
    """The demo tables in one SQL database, behind a small blocking API.

    Args:
        connections: the database's connections (`open_sqlite`, `open_postgres` or
            `open_mysql`); their `transactions` is None when the tables are not in the store's
            database, so a payment cannot commit with its record.
        tables: the table names and dialect.
        records_table: the store's records table, in the same database as the demo tables.
    """

    def __init__(
        self, connections: Connections, tables: Tables, *, records_table: str = DEFAULT_TABLE
    ) -> None:
        self._connections = connections
        self._connect = connections.connect
        self.tables = tables
        self.records_table = records_table

    @property
    def description(self) -> str:
        """Where the tables are, for people."""
        return self._connections.description

    @property
    def transactional(self) -> bool:
        """Whether the tables share the store's database, so payments can be transactional."""
        return self._connections.transactions is not None

    def transaction_connect(self) -> TransactionConnect | None:
        """Return a new `connect` for `TransactionalMiddleware`, or None if not transactional.

        Each request's connection is in the store's database; the handler inserts the payment
        with it (`insert_payment`), and the middleware commits the record in the same
        transaction. Call it once per app: what it returns keeps per-event-loop state.
        """
        transactions = self._connections.transactions
        return None if transactions is None else transactions()

    def statements_on(self, connection: Any) -> Connection:
        """Return a transactional request's `connection` ready for the demo's SQL
        (`insert_payment`): itself, or a PyMySQL one wrapped to have `execute`."""
        return self._connections.statements(connection)

    @classmethod
    def for_store_url(cls, url: str, *, prefix: str = DEFAULT_PREFIX) -> DemoDatabase:
        """Open the database that holds the store at `url`, and create the demo tables.

        Raises:
            ConfigurationError: the URL is not a store URL.
            StoreUnavailableError: the database cannot be reached.
        """
        parts = urlsplit(url)
        scheme = parts.scheme
        # The store's records table, named by its `table` option (validated by the store).
        records = dict(parse_qsl(parts.query)).get("table", DEFAULT_TABLE)
        connections: Connections
        if scheme in ("postgresql", "postgres"):
            tables = Tables(prefix, "postgresql")
            # The query string holds the store's own options (`?table=`), not libpq's.
            connections = open_postgres(url.split("?", 1)[0])
        elif scheme == "mysql":
            tables = Tables(prefix, "mysql")
            connections = open_mysql(url)  # with the store's own options (`?ssl=`...)
        elif scheme == "sqlite":
            path = sqlite_path(url)
            tables = Tables(prefix)
            connections = open_sqlite(path, transactional=True)
        elif scheme in ("memory", "redis", "rediss", "redis+cluster", "rediss+cluster"):
            # No SQL database to share with the store: a payment cannot commit with its record.
            tables, records = Tables(prefix), DEFAULT_TABLE
            connections = open_sqlite(":memory:", transactional=False)
        else:
            raise ConfigurationError(
                f"Unknown store URL {url!r}; use sqlite:///path.db, postgresql://..., "
                "mysql://..., redis://..., redis+cluster://... or memory://."
            )
        database = cls(connections, tables, records_table=records)
        try:
            database.create_tables()
        except BaseException:
            database.close()
            raise
        return database

    def create_tables(self) -> None:
        """Create the demo tables if they do not exist."""
        with self._connect() as conn:
            for statement in self.tables.schema():
                conn.execute(statement)

    def insert_payment(self, *, tenant: str, customer: str, amount: int, currency: str) -> Payment:
        """Charge `customer` and return the stored payment."""
        with self._connect() as conn:
            return insert_payment(
                conn,
                self.tables,
                tenant=tenant,
                customer=customer,
                amount=amount,
                currency=currency,
            )

    def list_payments(self, tenant: str, customer: str | None = None) -> list[Payment]:
        """Return the tenant's payments, oldest first, optionally for one customer."""
        query = "SELECT id, tenant, customer, amount, currency, status, created_at FROM {payments}"
        query += " WHERE tenant = ?"
        params: tuple[str, ...] = (tenant,)
        if customer is not None:
            query += " AND customer = ?"
            params += (customer,)
        query += " ORDER BY created_at, id"
        with self._connect() as conn:
            rows = conn.execute(self.tables.sql(query), params).fetchall()
        return [Payment(r[0], r[1], r[2], int(r[3]), r[4], r[5], parse_time(r[6])) for r in rows]

    def charges_by_customer(self, tenant: str) -> dict[str, int]:
        """Return how many payments each of the tenant's customers was charged."""
        query = "SELECT customer, COUNT(*) FROM {payments} WHERE tenant = ? GROUP BY customer"
        with self._connect() as conn:
            rows = conn.execute(self.tables.sql(query), (tenant,)).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def insert_user(self, *, tenant: str, email: str, name: str) -> tuple[User, bool]:
        """Insert the profile unless (tenant, email) exists; return it and whether it is new.

        One statement decides (`INSERT ... ON CONFLICT DO NOTHING`; on MySQL `ON DUPLICATE KEY
        UPDATE` of nothing), so two concurrent inserts of one email cannot both create a
        profile; the loser waits for the winner's commit, then reads its row. The profile read
        back is new if it carries the id this call made.
        """
        user = User(f"usr_{secrets.token_hex(12)}", tenant, email, name, datetime.now(UTC))
        with self._connect() as conn:
            conn.execute(
                self.tables.sql(
                    "INSERT INTO {users} (id, tenant, email, name, created_at)"
                    " VALUES (?, ?, ?, ?, ?)"
                )
                + self.tables.unless_the_email_exists(),
                (user.id, tenant, email, name, self.tables.timestamp(user.created_at)),
            )
            row = conn.execute(
                self.tables.sql(
                    "SELECT id, tenant, email, name, created_at FROM {users}"
                    " WHERE tenant = ? AND email = ?"
                ),
                (tenant, email),
            ).fetchone()
        if row[0] == user.id:
            return user, True
        return User(row[0], row[1], row[2], row[3], parse_time(row[4])), False

    def close(self) -> None:
        """Release the connections."""
        self._connections.close()


def sqlite_path(url: str) -> str:
    """Return the file path of a `sqlite:///path.db` URL (the store's own rule)."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.netloc or not path or path == "/":
        raise ConfigurationError(
            f"A SQLite store URL looks like sqlite:///path/to.db, not {url!r}."
        )
    # sqlite:///relative.db names ./relative.db; sqlite:////abs/path.db names /abs/path.db.
    return path[1:] if path.startswith("/") else path
