"""The demo payments API's own tables: payments and user profiles.

They live in the same SQL database as the idempotency store, under their own table names:
the same SQLite file for `sqlite:///...`, the same PostgreSQL database for `postgresql://...`.
Any other store (`memory://`, `redis://...`) has no SQL database, so the demo tables go to an
in-memory SQLite database that lives as long as the process.

When the tables share the store's database, `DemoDatabase.transaction_connect` gives the
connections transactional mode writes payments with (`retrysafe.transactions.asgi`), so a
payment and its idempotency record commit in one transaction.

The calls are blocking (sqlite3, psycopg); the API runs them in worker threads.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import anyio.to_thread

from retrysafe._errors import ConfigurationError, StoreUnavailableError
from retrysafe.stores._sql import DEFAULT_TABLE

__all__ = [
    "DemoDatabase",
    "Payment",
    "Tables",
    "User",
    "insert_payment",
    "redact_url",
    "sqlite_path",
]

DEFAULT_PREFIX = "retrysafe_demo_"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,40}")

LOCK_WAIT: Final = 30.0
"""Seconds a transactional request may wait for the database's write lock (SQLite's busy
timeout and the turn before it) or a row lock (PostgreSQL's `lock_timeout`)."""
_PG_POOL_SIZE: Final = 8

TransactionConnect = Callable[[], Any]
"""Makes one request's connection for `TransactionalMiddleware(connect=...)`: an async context
manager of a sqlite3 or psycopg connection."""


class Connection(Protocol):
    """The part of a DB-API connection the demo uses (sqlite3 and psycopg both fit)."""

    def execute(self, query: Any, params: Any = ...) -> Any:
        """Run one statement and return its cursor."""
        ...


@dataclass(frozen=True, slots=True)
class Payment:
    """One charge, as the API stores and returns it."""

    id: str
    tenant: str
    customer: str
    amount: int
    currency: str
    status: str
    created_at: datetime

    def public(self) -> dict[str, object]:
        """Return the JSON body the API answers with (the tenant is implied by the token)."""
        return {
            "id": self.id,
            "customer": self.customer,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class User:
    """One user profile; the email is unique per tenant in the database."""

    id: str
    tenant: str
    email: str
    name: str
    created_at: datetime

    def public(self) -> dict[str, object]:
        """Return the JSON body the API answers with."""
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Tables:
    """The demo's table names and the SQL dialect's placeholder.

    Attributes:
        prefix: put before `payments` and `users` (default `retrysafe_demo_`).
        postgres: whether the database is PostgreSQL (`%s` placeholders, TIMESTAMPTZ).
    """

    prefix: str = DEFAULT_PREFIX
    postgres: bool = False

    def __post_init__(self) -> None:
        if not _IDENTIFIER.fullmatch(self.prefix):
            raise ConfigurationError(f"Demo table prefix {self.prefix!r} is not a plain SQL name.")

    @property
    def payments(self) -> str:
        """The payments table."""
        return f"{self.prefix}payments"

    @property
    def users(self) -> str:
        """The users table."""
        return f"{self.prefix}users"

    def sql(self, text: str) -> str:
        """Fill in table names and this dialect's placeholders (`?` in the source text)."""
        text = text.format(payments=self.payments, users=self.users)
        return text.replace("?", "%s") if self.postgres else text

    def schema(self) -> list[str]:
        """Return the CREATE statements, safe to run on every start."""
        timestamp = "TIMESTAMPTZ" if self.postgres else "TEXT"
        return [
            self.sql(
                "CREATE TABLE IF NOT EXISTS {payments} ("
                " id TEXT PRIMARY KEY,"
                " tenant TEXT NOT NULL,"
                " customer TEXT NOT NULL,"
                " amount BIGINT NOT NULL CHECK (amount > 0),"
                " currency TEXT NOT NULL,"
                " status TEXT NOT NULL,"
                f" created_at {timestamp} NOT NULL)"
            ),
            self.sql(
                f"CREATE INDEX IF NOT EXISTS {self.prefix}payments_tenant_customer"
                " ON {payments} (tenant, customer)"
            ),
            # The seed's database rule: one profile per (tenant, email), held by the database
            # itself, so no interleaving of requests can create a second one (B31).
            self.sql(
                "CREATE TABLE IF NOT EXISTS {users} ("
                " id TEXT PRIMARY KEY,"
                " tenant TEXT NOT NULL,"
                " email TEXT NOT NULL,"
                " name TEXT NOT NULL,"
                f" created_at {timestamp} NOT NULL,"
                " UNIQUE (tenant, email))"
            ),
        ]

    def timestamp(self, value: datetime) -> object:
        """Return `value` as this dialect stores it."""
        return value if self.postgres else _iso(value)


def insert_payment(
    conn: Connection, tables: Tables, *, tenant: str, customer: str, amount: int, currency: str
) -> Payment:
    """Insert one charge and return it; the caller owns the transaction.

    Kept small and alone on purpose: the transactional mode commits this insert together with
    the idempotency record, in one transaction on the same connection.
    """
    payment = Payment(
        id=f"pay_{secrets.token_hex(12)}",
        tenant=tenant,
        customer=customer,
        amount=amount,
        currency=currency,
        status="succeeded",
        created_at=datetime.now(UTC),
    )
    conn.execute(
        tables.sql(
            "INSERT INTO {payments} (id, tenant, customer, amount, currency, status, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
        ),
        (
            payment.id,
            payment.tenant,
            payment.customer,
            payment.amount,
            payment.currency,
            payment.status,
            tables.timestamp(payment.created_at),
        ),
    )
    return payment


class DemoDatabase:
    """The demo tables in one SQL database, behind a small blocking API.

    Args:
        connect: opens a connection context (a pooled PostgreSQL connection, or the one SQLite
            connection under a lock); the context commits on success and rolls back on error.
        tables: the table names and dialect.
        close: releases the connections.
        description: where the tables are, for people.
        transactions: makes the `connect` of transactional mode, one per app (None: the tables
            are not in the store's database, so a payment cannot commit with its record).
        records_table: the store's records table, in the same database as the demo tables.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        tables: Tables,
        close: Callable[[], None],
        *,
        description: str,
        transactions: Callable[[], TransactionConnect] | None = None,
        records_table: str = DEFAULT_TABLE,
    ) -> None:
        self._connect = connect
        self.tables = tables
        self._close = close
        self.description = description
        self._transactions = transactions
        self.records_table = records_table

    @property
    def transactional(self) -> bool:
        """Whether the tables share the store's database, so payments can be transactional."""
        return self._transactions is not None

    def transaction_connect(self) -> TransactionConnect | None:
        """Return a new `connect` for `TransactionalMiddleware`, or None if not transactional.

        Each request's connection is in the store's database; the handler inserts the payment
        with it (`insert_payment`), and the middleware commits the record in the same
        transaction. Call it once per app: what it returns keeps per-event-loop state.
        """
        return None if self._transactions is None else self._transactions()

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
        if scheme in ("postgresql", "postgres"):
            # The query string holds the store's own options (`?table=`), not libpq's.
            database = _postgres(url.split("?", 1)[0], Tables(prefix, postgres=True), records)
        elif scheme == "sqlite":
            database = _sqlite(sqlite_path(url), Tables(prefix), records)
        elif scheme in ("memory", "redis", "rediss"):
            database = _sqlite(":memory:", Tables(prefix), None)
        else:
            raise ConfigurationError(
                f"Unknown store URL {url!r}; use sqlite:///path.db, postgresql://..., "
                "redis://... or memory://."
            )
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
        return [Payment(r[0], r[1], r[2], int(r[3]), r[4], r[5], _parse_time(r[6])) for r in rows]

    def charges_by_customer(self, tenant: str) -> dict[str, int]:
        """Return how many payments each of the tenant's customers was charged."""
        query = "SELECT customer, COUNT(*) FROM {payments} WHERE tenant = ? GROUP BY customer"
        with self._connect() as conn:
            rows = conn.execute(self.tables.sql(query), (tenant,)).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def insert_user(self, *, tenant: str, email: str, name: str) -> tuple[User, bool]:
        """Insert the profile unless (tenant, email) exists; return it and whether it is new.

        One statement decides (`INSERT ... ON CONFLICT DO NOTHING`), so two concurrent inserts
        of one email cannot both create a profile; the loser reads the winner's row.
        """
        user = User(f"usr_{secrets.token_hex(12)}", tenant, email, name, datetime.now(UTC))
        with self._connect() as conn:
            inserted = conn.execute(
                self.tables.sql(
                    "INSERT INTO {users} (id, tenant, email, name, created_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, email) DO NOTHING RETURNING id"
                ),
                (user.id, tenant, email, name, self.tables.timestamp(user.created_at)),
            ).fetchone()
            if inserted is not None:
                return user, True
            row = conn.execute(
                self.tables.sql(
                    "SELECT id, tenant, email, name, created_at FROM {users}"
                    " WHERE tenant = ? AND email = ?"
                ),
                (tenant, email),
            ).fetchone()
        return User(row[0], row[1], row[2], row[3], _parse_time(row[4])), False

    def close(self) -> None:
        """Release the connections."""
        self._close()


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


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by `***`, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc[2]}").geturl()


def _sqlite(path: str, tables: Tables, records_table: str | None) -> DemoDatabase:
    if path != ":memory:" and not Path(path).parent.exists():
        raise StoreUnavailableError(
            f"The directory of the SQLite database {path!r} does not exist."
        )
    try:
        conn = sqlite3.connect(
            path, timeout=LOCK_WAIT, check_same_thread=False, isolation_level=None
        )
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as error:
        raise StoreUnavailableError(f"Cannot open the SQLite database {path!r}: {error}") from error
    lock = threading.Lock()

    @contextmanager
    def connect() -> Iterator[sqlite3.Connection]:
        # One connection, one transaction at a time: SQLite serialises writers anyway, and the
        # busy timeout covers the store's own connections to the same file.
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    turns = None if records_table is None else _SQLiteTurns(path)

    def close() -> None:
        with lock:
            conn.close()
        if turns is not None:
            turns.close()

    return DemoDatabase(
        connect,
        tables,
        close,
        description=f"SQLite {path}",
        transactions=None if turns is None else turns.connect,
        records_table=records_table or DEFAULT_TABLE,
    )


class _SQLiteTurns:
    """The connection transactional requests write with on SQLite, one request at a time.

    SQLite has one writer at a time, and a claim in transactional mode takes the write lock at
    `BEGIN IMMEDIATE`. Rather than have every waiting request poll the lock from a worker
    thread (unfair, and each poller holds a thread the lock holder may need), the requests of
    this process take turns on a lock, in order, on one connection; the busy timeout covers
    other connections to the file (the store's, another process's). A duplicate waits its turn,
    then finds the first request's committed record and replays it.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._opened: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def connect(self) -> TransactionConnect:
        """Return a `connect` for one app: an async context manager of its connection."""
        turn = anyio.Lock()
        opened: list[sqlite3.Connection] = []

        @asynccontextmanager
        async def connection() -> AsyncIterator[sqlite3.Connection]:
            with anyio.fail_after(LOCK_WAIT):  # past it: 503, and the client retries
                await turn.acquire()
            try:
                if not opened:
                    opened.append(self._open())
                yield opened[0]
            finally:
                turn.release()

        return connection

    def _open(self) -> sqlite3.Connection:
        # Its work runs in worker threads, one request at a time (the turn).
        conn = sqlite3.connect(
            self._path, timeout=LOCK_WAIT, check_same_thread=False, isolation_level=None
        )
        with self._guard:
            self._opened.append(conn)
        return conn

    def close(self) -> None:
        """Close the connections."""
        with self._guard:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()


def _postgres(url: str, tables: Tables, records_table: str) -> DemoDatabase:
    try:
        import psycopg  # noqa: PLC0415 -- an optional extra, imported when used
        from psycopg_pool import ConnectionPool  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - the extra is part of the test set-up
        raise ConfigurationError(
            f"The PostgreSQL demo needs the 'postgres' extra: pip install 'retrysafe[postgres]' "
            f"({error})."
        ) from error
    try:
        pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=_PG_POOL_SIZE,
            open=False,
            timeout=10.0,
            kwargs={"connect_timeout": 5},
            configure=_lock_timeout,
        )
    except psycopg.Error as error:
        raise ConfigurationError(f"Invalid PostgreSQL URL: {_first_line(error)}") from error
    try:
        # Connect once up front, so a wrong host or database is one clear error at start-up.
        with psycopg.connect(url, connect_timeout=5):
            pass
        pool.open(wait=True, timeout=10.0)
    except (psycopg.Error, TimeoutError) as error:
        pool.close()
        raise StoreUnavailableError(f"Cannot reach PostgreSQL: {_first_line(error)}") from error

    @contextmanager
    def connect() -> Iterator[Any]:
        with pool.connection() as conn:  # commits on success, rolls back on error
            yield conn

    def transactions() -> TransactionConnect:
        # At most as many requests as the pool has connections wait for one, so the others
        # wait here, on the event loop, not in worker threads the connection holders need.
        slots = anyio.Semaphore(_PG_POOL_SIZE)

        @asynccontextmanager
        async def connection() -> AsyncIterator[Any]:
            async with slots:
                conn = await anyio.to_thread.run_sync(pool.getconn)
                try:
                    yield conn
                finally:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(pool.putconn, conn)

        return connection

    host = urlsplit(url).hostname or "localhost"
    return DemoDatabase(
        connect,
        tables,
        pool.close,
        description=f"PostgreSQL on {host}",
        transactions=transactions,
        records_table=records_table,
    )


def _lock_timeout(conn: Any) -> None:
    """Bound a wait on a row lock: a duplicate waits for the first request's commit."""
    conn.execute(f"SET lock_timeout = {int(LOCK_WAIT * 1000)}")
    conn.commit()


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
