"""Fixtures for the demo API: a fresh store and demo tables on SQLite, PostgreSQL or MySQL,
served."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from retrysafe import open_async_store
from retrysafe.demo import DemoApp, DemoDatabase, create_app
from retrysafe.demo._relay import serve_asgi
from tests.conftest import drop_mysql_tables, drop_postgres_tables, unique_name
from tests.http.conftest import credential_scope

SCOPE_SECRET = "the demo tests' scope secret"
"""The scope secret of the demo API the tests serve, so they can name a tenant's scope (B8)."""


def scope_of(tenant: str) -> str:
    """The scope the middleware stores for `tenant`'s `Authorization: Bearer <tenant>`."""
    return credential_scope(SCOPE_SECRET, f"bearer {tenant}")


@dataclass(frozen=True)
class DemoStore:
    """Where one test's store and demo tables live."""

    url: str
    prefix: str


@dataclass(frozen=True)
class RunningApi:
    """The demo API served on a loopback port, with its database and store URL."""

    url: str
    app: DemoApp
    store_url: str

    def client(self, tenant: str | None = "tenant-a") -> httpx.Client:
        """An httpx client that pays as `tenant` (no Authorization header if None)."""
        headers = {} if tenant is None else {"Authorization": f"Bearer {tenant}"}
        return httpx.Client(base_url=self.url, headers=headers, trust_env=False, timeout=10.0)


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def demo_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DemoStore]:
    """A fresh store URL and demo table prefix, on SQLite, PostgreSQL and MySQL (MariaDB)."""
    if request.param == "sqlite":
        yield DemoStore(f"sqlite:///{tmp_path / 'demo.db'}", "retrysafe_demo_")
        return
    name = unique_name()
    server = "mysql_url" if request.param == "mysql" else "postgres_url"
    url = f"{request.getfixturevalue(server)}?table={name}"
    prefix = f"{name}_demo_"
    try:
        yield DemoStore(url, prefix)
    finally:
        if request.param == "mysql":
            drop_mysql_tables(url, name)  # the records table and the demo's, named after it
        else:
            drop_postgres_tables(url, name, f"{prefix}payments", f"{prefix}users")


@pytest.fixture
def api(demo_store: DemoStore) -> Iterator[RunningApi]:
    """The demo API behind the idempotency middleware, served by uvicorn on a loopback port."""
    database = DemoDatabase.for_store_url(demo_store.url, prefix=demo_store.prefix)
    try:
        store = open_async_store(demo_store.url)
        app = create_app(database, store=store, latency=0.05, scope_secret=SCOPE_SECRET)
        with serve_asgi(app, lifespan="on") as url:
            yield RunningApi(url, app, demo_store.url)
    finally:
        database.close()
