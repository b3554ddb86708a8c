"""The store fixtures: fresh stores of every kind, skipped with a clear message when unset."""

from __future__ import annotations

import itertools
import re

import pytest

pytest_plugins = ["pytester"]

USES_EVERY_FIXTURE = """
from pathlib import Path

from retrysafe import Identity


def test_memory(retrysafe_memory_store, retrysafe_memory_store_url):
    assert retrysafe_memory_store_url == "memory://"
    assert retrysafe_memory_store.list_records() == []


def test_sqlite(retrysafe_sqlite_store, retrysafe_sqlite_store_url, tmp_path):
    assert retrysafe_sqlite_store.list_records() == []
    retrysafe_sqlite_store.claim(Identity("ns", "scope", "k"), "fp", lease=30, retention=60)
    assert Path(retrysafe_sqlite_store_url.removeprefix("sqlite:///")).parent == tmp_path


def test_each_kind(retrysafe_store, retrysafe_store_url):
    assert retrysafe_store.list_records() == []


def test_counter(retrysafe_counter, retrysafe_assert_runs_once):
    retrysafe_counter.increment()
    assert retrysafe_counter.count == 1
    assert retrysafe_assert_runs_once.__name__ == "assert_runs_once"
"""

USES_SERVERS = '''
from retrysafe import Identity

SEEN = {}


def test_redis(retrysafe_redis_store, retrysafe_redis_store_url):
    retrysafe_redis_store.claim(Identity("ns", "s", "k"), "fp", lease=30, retention=60)
    assert len(retrysafe_redis_store.list_records()) == 1
    SEEN["redis"] = retrysafe_redis_store_url


def test_postgres(retrysafe_postgres_store, retrysafe_postgres_store_url):
    retrysafe_postgres_store.claim(Identity("ns", "s", "k"), "fp", lease=30, retention=60)
    assert len(retrysafe_postgres_store.list_records()) == 1
    SEEN["postgres"] = retrysafe_postgres_store_url


def test_each_kind(retrysafe_store):
    assert retrysafe_store.list_records() == []


def test_urls_were_fresh(request):
    """Runs last: write the URLs the tests used, for the outer test to check cleanup."""
    (request.config.rootpath / "seen.txt").write_text("\\n".join(SEEN.values()))
'''


def test_memory_and_sqlite_fixtures_give_fresh_stores(pytester: pytest.Pytester) -> None:
    """A sample project's tests pass on the memory and SQLite fixtures; `retrysafe_store` runs
    once per configured kind (memory and SQLite when no server URL is given)."""
    pytester.makepyfile(test_stores=USES_EVERY_FIXTURE)
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        ["*test_each_kind?memory? PASSED*", "*test_each_kind?sqlite? PASSED*"]
    )


def test_a_server_store_without_its_url_skips_saying_which_option_to_set(
    pytester: pytest.Pytester,
) -> None:
    """Without --retrysafe-redis-url or --retrysafe-postgres-url, their fixtures skip, naming
    the option."""
    pytester.makepyfile(test_servers=USES_SERVERS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=3, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*no Redis for a retrysafe redis store: pass --retrysafe-redis-url=redis://*",
            "*no PostgreSQL for a retrysafe postgres store: pass --retrysafe-postgres-url=*",
        ]
    )


@pytest.mark.redis
@pytest.mark.postgres
def test_server_stores_use_the_given_urls_and_are_removed_afterwards(
    pytester: pytest.Pytester, redis_url: str, postgres_url: str
) -> None:
    """With the URLs given (command line for Redis, ini for PostgreSQL), the server fixtures
    give a fresh prefix and table, `retrysafe_store` adds both kinds, and nothing is left."""
    import psycopg
    import redis

    pytester.makeini(f"[pytest]\nretrysafe_postgres_url = {postgres_url}\n")
    pytester.makepyfile(test_servers=USES_SERVERS)
    result = pytester.runpytest("-p", "no:cacheprovider", f"--retrysafe-redis-url={redis_url}")
    result.assert_outcomes(passed=7)
    redis_store, postgres_store = (pytester.path / "seen.txt").read_text().splitlines()
    prefix = re.search(r"prefix=(\w+)", redis_store)
    table = re.search(r"table=(\w+)", postgres_store)
    assert prefix is not None
    assert table is not None
    with redis.Redis.from_url(redis_url) as client:
        assert list(client.scan_iter(match=f"{prefix[1]}*")) == []
    with psycopg.connect(postgres_url) as conn:
        found = conn.execute("SELECT to_regclass(%s)", (table[1],)).fetchone()
    assert found == (None,)


def test_every_fixture_of_the_plugin_is_named_retrysafe_(pytester: pytest.Pytester) -> None:
    """No plugin fixture can shadow a user's own: each name starts with `retrysafe_`."""
    result = pytester.runpytest("-p", "no:cacheprovider", "--fixtures")
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "from retrysafe.pytest_plugin" in line)
    section = itertools.takewhile(
        lambda line: "fixtures defined from" not in line, lines[start + 1 :]
    )  # up to the next plugin's fixtures
    names = [
        line.split()[0]
        for line in section
        if line and not line.startswith((" ", "-", "=")) and "--" in line
    ]
    assert len(names) >= 12
    assert all(name.startswith("retrysafe_") for name in names), names
