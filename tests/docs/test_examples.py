"""Every code block of README.md and docs/ runs as written (issue 17): see tests/docs/examples.py.

One test per page. A page whose blocks reach Redis or PostgreSQL is a service test: it gets the
test servers (Redis database 14, flushed first; a PostgreSQL database of its own, dropped after),
and skips loudly without them, or fails under CI=true.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.docs.examples import PAGES, ROOT, Services, needs, run_page

pytestmark = pytest.mark.docs


def _param(name: str) -> object:
    wanted = needs((ROOT / name).read_text())
    marked = wanted & {"redis", "postgres", "rabbitmq"}
    marks = [getattr(pytest.mark, service) for service in sorted(marked)]
    if "redis_cluster" in wanted:
        marks.append(pytest.mark.redis)
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture
def services(request: pytest.FixtureRequest) -> Iterator[Services]:
    """The servers the page's blocks reach, fresh for the page."""
    wanted = needs((ROOT / request.node.callspec.params["name"]).read_text())
    services = Services()
    database = None
    if "redis" in wanted:
        import redis

        base = urlsplit(request.getfixturevalue("redis_url"))
        services.redis = f"redis://{base.netloc}"
        with redis.Redis.from_url(f"{services.redis}/14") as client:
            client.flushdb()
    if "redis_cluster" in wanted:
        services.redis_cluster = request.getfixturevalue("redis_cluster_url").split("?", 1)[0]
    if "rabbitmq" in wanted:
        services.rabbitmq = request.getfixturevalue("amqp_url")
    if "postgres" in wanted:
        import psycopg

        admin = request.getfixturevalue("postgres_url")
        database = f"rs_docs_{secrets.token_hex(4)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        services.postgres = urlsplit(admin)._replace(path=f"/{database}").geturl()
    try:
        yield services
    finally:
        if database is not None:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [_param(name) for name in PAGES])
def test_every_block_runs(name: str, services: Services, tmp_path: Path) -> None:
    done = run_page(name, tmp_path, services)
    print(done.stdout)
    assert done.returncode == 0, f"{name}: a block failed\n{done.stdout}\n{done.stderr[-6000:]}"
    assert " 0 blocks ran, 0 skipped" not in done.stdout, f"{name}: no code block ran"
