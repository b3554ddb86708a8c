"""What the demo tables hold: their rows, their names and schema, and the payment insert.

`Tables` carries the SQL dialect (SQLite, PostgreSQL or MySQL placeholders, column types and
timestamps), so every statement is written once, with `?` placeholders and `{payments}` /
`{users}` table names.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from retrysafe._errors import ConfigurationError
from retrysafe.demo._connections import Connection

__all__ = [
    "DEFAULT_PREFIX",
    "Dialect",
    "Payment",
    "Tables",
    "User",
    "insert_payment",
    "iso_time",
    "parse_time",
]

DEFAULT_PREFIX = "retrysafe_demo_"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,40}")

Dialect = Literal["sqlite", "postgresql", "mysql"]
"""The SQL database the demo tables are in."""

# Per dialect: a text column, a timestamp column, and what follows `CREATE TABLE (...)`.
# MySQL indexes no TEXT column without a length, so its texts are VARCHARs as long as the API
# accepts (a bearer token, an email), compared byte for byte (`utf8mb4_bin`): tenants `A` and
# `a` are two tenants, as on SQLite and PostgreSQL. Its DATETIME holds UTC, without a zone.
_TYPES: Final[dict[str, tuple[str, str, str]]] = {
    "sqlite": ("TEXT", "TEXT", ""),
    "postgresql": ("TEXT", "TIMESTAMPTZ", ""),
    "mysql": (
        "VARCHAR(255)",
        "DATETIME(6)",
        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    ),
}


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
    """The demo's table names and the SQL dialect.

    Attributes:
        prefix: put before `payments` and `users` (default `retrysafe_demo_`).
        dialect: the database: `sqlite` (`?` placeholders, timestamps as ISO text),
            `postgresql` (`%s`, TIMESTAMPTZ) or `mysql` (`%s`, DATETIME(6) in UTC).
    """

    prefix: str = DEFAULT_PREFIX
    dialect: Dialect = "sqlite"

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
        return text if self.dialect == "sqlite" else text.replace("?", "%s")

    def schema(self) -> list[str]:
        """Return the CREATE statements, safe to run on every start."""
        text, timestamp, options = _TYPES[self.dialect]
        index = f"{self.prefix}payments_tenant_customer"
        # MySQL has no CREATE INDEX IF NOT EXISTS (MariaDB has): its index is in the table.
        inline = f", INDEX {index} (tenant, customer)" if self.dialect == "mysql" else ""
        statements = [
            "CREATE TABLE IF NOT EXISTS {payments} ("
            f" id {text} PRIMARY KEY,"
            f" tenant {text} NOT NULL,"
            f" customer {text} NOT NULL,"
            " amount BIGINT NOT NULL CHECK (amount > 0),"
            f" currency {text} NOT NULL,"
            f" status {text} NOT NULL,"
            f" created_at {timestamp} NOT NULL{inline}){options}",
            # The seed's database rule: one profile per (tenant, email), held by the database
            # itself, so no interleaving of requests can create a second one (B31).
            "CREATE TABLE IF NOT EXISTS {users} ("
            f" id {text} PRIMARY KEY,"
            f" tenant {text} NOT NULL,"
            f" email {text} NOT NULL,"
            f" name {text} NOT NULL,"
            f" created_at {timestamp} NOT NULL,"
            f" UNIQUE (tenant, email)){options}",
        ]
        if not inline:
            statements.insert(
                1, f"CREATE INDEX IF NOT EXISTS {index} ON {{payments}} (tenant, customer)"
            )
        return [self.sql(statement) for statement in statements]

    def unless_the_email_exists(self) -> str:
        """Return the clause that makes an INSERT into {users} do nothing when the tenant has
        a profile with that email already (the unique key decides, in one statement)."""
        if self.dialect == "mysql":  # no ON CONFLICT: an update of nothing is the same
            return " ON DUPLICATE KEY UPDATE id = id"
        return " ON CONFLICT (tenant, email) DO NOTHING"

    def timestamp(self, value: datetime) -> object:
        """Return `value` as this dialect stores it."""
        if self.dialect == "postgresql":
            return value
        if self.dialect == "mysql":
            return value.astimezone(UTC).replace(tzinfo=None)
        return iso_time(value)


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
    """Return a stored `created_at` as a datetime (PostgreSQL gives one, MySQL one in UTC
    without a zone, SQLite text)."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
