"""Fixtures for the completer tests: a database (SQLite file or PostgreSQL), its order tables,
and the test payment provider, all shared with the transactional-mode tests' tooling."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from retrysafe import Identity, Record
from tests.transactions.conftest import DATABASES, Database, make_database
from tests.transactions.provider import PaymentProvider


@dataclass
class Shop:
    """One test's database with an orders table, a phase log and the provider's address."""

    database: Database
    orders: str
    log: str
    provider: PaymentProvider

    def spec(self) -> dict[str, str]:
        """The request fields that point an order at this test's tables and provider."""
        return {"orders": self.orders, "log": self.log, "provider": self.provider.url}

    def record(self, key: str) -> Record | None:
        """Return order `key`'s record as the store sees it."""
        store = self.database.store()
        try:
            return store.get(Identity("orders", "tenant-a", key))
        finally:
            store.close()

    def phases_logged(self, key: str) -> list[str]:
        """Return the phases whose writes committed for order `key`, sorted."""
        rows = self.database.execute(f"SELECT phase FROM {self.log} WHERE key = ?", (key,))  # noqa: S608 - a unique_name() table
        return sorted(row[0] for row in rows)

    def resumable_rows(self) -> int:
        """Return how many operations have a stored request (unfinished ones)."""
        table = f"{self.database.table}_resumable"
        return int(self.database.execute(f'SELECT COUNT(*) FROM "{table}"')[0][0])  # noqa: S608


@pytest.fixture
def provider() -> Iterator[PaymentProvider]:
    """The test payment provider, served on a loopback port."""
    server = PaymentProvider()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=DATABASES)
def shop(
    request: pytest.FixtureRequest, tmp_path: Path, provider: PaymentProvider
) -> Iterator[Shop]:
    """A fresh SQLite file or a real PostgreSQL server with this test's own tables."""
    with make_database(str(request.param), request, tmp_path) as database:
        database.extra_tables.append(f"{database.table}_resumable")
        orders = database.create_table(
            "rs_orders", "key TEXT PRIMARY KEY, status TEXT, charge TEXT"
        )
        log = database.create_table("rs_log", "id TEXT PRIMARY KEY, key TEXT, phase TEXT")
        yield Shop(database, orders, log, provider)
