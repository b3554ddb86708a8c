"""What the demo tables hold: their rows, their names and schema, and the payment insert.

`Tables` carries the SQL dialect (SQLite or PostgreSQL placeholders and timestamps), so every
statement is written once, with `?` placeholders and `{payments}` / `{users}` table names.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from retrysafe._errors import ConfigurationError
from retrysafe.demo._connections import Connection

__all__ = [
    "DEFAULT_PREFIX",
    "Payment",
    "Tables",
    "User",
    "insert_payment",
    "iso_time",
    "parse_time",
]

DEFAULT_PREFIX = "retrysafe_demo_"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,40}")


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
            "created_at": iso_time(self.created_at),
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
            "created_at": iso_time(self.created_at),
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
        return value if self.postgres else iso_time(value)


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


def iso_time(value: datetime) -> str:
    """Return `value` as ISO 8601 UTC text with microseconds and a `Z` (the API's format)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: object) -> datetime:
    """Return a stored `created_at` as a datetime (PostgreSQL gives one, SQLite text)."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
