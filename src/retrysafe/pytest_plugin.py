"""The retrysafe pytest plugin: fresh stores, `assert_runs_once`, on with the package.

Every fixture's name starts with `retrysafe_`, so none shadows a fixture of your own suite:

- `retrysafe_memory_store`, `retrysafe_sqlite_store`, `retrysafe_redis_store`,
  `retrysafe_postgres_store`: a fresh sync store of that kind, closed afterwards;
  `retrysafe_<kind>_store_url`: its URL, for an async store or another process.
- `retrysafe_store` / `retrysafe_store_url`: the test runs once per kind configured here
  (memory and SQLite, and Redis and PostgreSQL when their URLs are given).
- `retrysafe_counter`: a fresh `RunCounter`; `retrysafe_assert_runs_once`: the helper.

Redis and PostgreSQL come from `--retrysafe-redis-url` / `--retrysafe-postgres-url` or the
`retrysafe_redis_url` / `retrysafe_postgres_url` ini options; without one, a test that needs it
is skipped with a message that says which option to set. The plugin loads in every pytest run of
an installed retrysafe, so it imports only pytest here and retrysafe inside the fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from retrysafe.stores.base import Store
    from retrysafe.testing import RunCounter, RunsOnceReport

__all__ = [
    "pytest_addoption",
    "pytest_generate_tests",
    "retrysafe_assert_runs_once",
    "retrysafe_counter",
    "retrysafe_memory_store",
    "retrysafe_memory_store_url",
    "retrysafe_postgres_store",
    "retrysafe_postgres_store_url",
    "retrysafe_redis_store",
    "retrysafe_redis_store_url",
    "retrysafe_sqlite_store",
    "retrysafe_sqlite_store_url",
    "retrysafe_store",
    "retrysafe_store_url",
]

_SERVERS = {"redis": "redis://HOST:6379/0", "postgres": "postgresql://USER@HOST/DB"}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the Redis and PostgreSQL URL options, on the command line and in the ini file."""
    group = parser.getgroup("retrysafe", "retrysafe stores for tests")
    for kind, example in _SERVERS.items():
        name = f"retrysafe_{kind}_url"
        about = f"server for the retrysafe_{kind}_store fixtures, such as {example}"
        group.addoption(f"--retrysafe-{kind}-url", dest=name, default=None, help=about)
        parser.addini(name, about, default="")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test that uses `retrysafe_store` or `retrysafe_store_url` once per store kind."""
    if "retrysafe_store_kind" in metafunc.fixturenames:
        from retrysafe.testing._stores import configured_kinds  # noqa: PLC0415

        metafunc.parametrize("retrysafe_store_kind", configured_kinds(metafunc.config))


def _fresh_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    from retrysafe.testing._stores import fresh_store_url  # noqa: PLC0415

    with fresh_store_url(kind, request.config, tmp_path) as url:
        yield url


def _opened(url: str) -> Iterator[Store]:
    from retrysafe import open_store  # noqa: PLC0415

    store = open_store(url)
    try:
        yield store
    finally:
        store.close()


def _fixtures(kind: str, url: str, store: str) -> tuple[Any, Any]:
    """The fixtures `retrysafe_<kind>_store_url` and `retrysafe_<kind>_store`, documented by
    `url` and `store`."""

    def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
        yield from _fresh_url(kind, request, tmp_path)

    def fresh_store(request: pytest.FixtureRequest) -> Iterator[Store]:
        yield from _opened(request.getfixturevalue(f"retrysafe_{kind}_store_url"))

    fresh_url.__doc__, fresh_store.__doc__ = url, store
    return (
        pytest.fixture(name=f"retrysafe_{kind}_store_url")(fresh_url),
        pytest.fixture(name=f"retrysafe_{kind}_store")(fresh_store),
    )


retrysafe_memory_store_url, retrysafe_memory_store = _fixtures(
    "memory",
    "The URL of a fresh memory store (`memory://`: each store opened from it is empty).",
    "A fresh memory store, closed after the test.",
)
retrysafe_sqlite_store_url, retrysafe_sqlite_store = _fixtures(
    "sqlite",
    "The URL of a fresh SQLite store, a file in the test's `tmp_path`.",
    "A fresh SQLite store in the test's `tmp_path`, closed after the test.",
)
retrysafe_redis_store_url, retrysafe_redis_store = _fixtures(
    "redis",
    "The URL of a fresh Redis store (a key prefix of its own, deleted afterwards).",
    "A fresh Redis store on the server `--retrysafe-redis-url` names, cleaned up after.",
)
retrysafe_postgres_store_url, retrysafe_postgres_store = _fixtures(
    "postgres",
    "The URL of a fresh PostgreSQL store (a table of its own, dropped afterwards).",
    "A fresh PostgreSQL store on the server `--retrysafe-postgres-url` names, dropped after.",
)


@pytest.fixture
def retrysafe_store_kind() -> str:
    """The store kind of this run of the test (parametrized by `pytest_generate_tests`)."""
    return "memory"  # pragma: no cover - replaced by the parametrization


@pytest.fixture
def retrysafe_store_url(
    retrysafe_store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """The URL of a fresh store of each kind configured (the test runs once per kind)."""
    yield from _fresh_url(retrysafe_store_kind, request, tmp_path)


@pytest.fixture
def retrysafe_store(retrysafe_store_url: str) -> Iterator[Store]:
    """A fresh sync store of each kind configured (the test runs once per kind)."""
    yield from _opened(retrysafe_store_url)


@pytest.fixture
def retrysafe_counter() -> RunCounter:
    """A fresh `RunCounter`: call `increment()` where the effect happens."""
    from retrysafe.testing import RunCounter  # noqa: PLC0415

    return RunCounter()


@pytest.fixture
def retrysafe_assert_runs_once() -> Callable[..., RunsOnceReport]:
    """`retrysafe.testing.assert_runs_once`, for tests that prefer a fixture to an import."""
    from retrysafe.testing import assert_runs_once  # noqa: PLC0415

    return assert_runs_once
