"""Every code block of README.md and docs/ runs as written (issue 17): see tests/docs/examples.py.

One test per page. A page whose blocks reach a server is a service test: it gets the test servers
(Redis database 14, flushed first; a PostgreSQL and a MariaDB database of its own, dropped after;
RabbitMQ; NATS), and skips loudly without them, or fails under CI=true.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.docs.examples import PAGES, ROOT, Services, needs, run_page

pytestmark = pytest.mark.docs


def _param(name: str) -> object:
    wanted = needs((ROOT / name).read_text())
    marked = wanted & {"redis", "postgres", "mysql", "rabbitmq", "nats"}
    marks = [getattr(pytest.mark, service) for service in sorted(marked)]
    if "redis_cluster" in wanted:
        marks.append(pytest.mark.redis)
    return pytest.param(name, marks=marks, id=name)


@contextlib.contextmanager
def postgres_database(admin: str) -> Iterator[str]:
    """A PostgreSQL database of the page's own on the server at `admin`; its URL."""
    import psycopg

    database = f"rs_docs_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        yield urlsplit(admin)._replace(path=f"/{database}").geturl()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')


@contextlib.contextmanager
def mysql_database(admin: str) -> Iterator[str]:
    """A MariaDB database of the page's own on the server at `admin`; its URL."""
    import pymysql

    parts = urlsplit(admin)
    database = f"rs_docs_{secrets.token_hex(4)}"

    def execute(statement: str) -> None:
        conn = pymysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
            autocommit=True,
        )
        with conn, conn.cursor() as cursor:
            cursor.execute(statement)

    execute(f"CREATE DATABASE `{database}`")
    try:
        yield parts._replace(path=f"/{database}").geturl()
    finally:
        execute(f"DROP DATABASE IF EXISTS `{database}`")


@pytest.fixture
def services(request: pytest.FixtureRequest) -> Iterator[Services]:
    """The servers the page's blocks reach, fresh for the page."""
    wanted = needs((ROOT / request.node.callspec.params["name"]).read_text())
    services = Services()
    with contextlib.ExitStack() as stack:
        if "redis" in wanted:
            import redis

            base = urlsplit(request.getfixturevalue("redis_url"))
            services.redis = f"redis://{base.netloc}"
            with redis.Redis.from_url(f"{services.redis}/14") as client:
                client.flushdb()
        if "redis_cluster" in wanted:
            services.redis_cluster = request.getfixturevalue("redis_cluster_url").split("?")[0]
        if "rabbitmq" in wanted:
            services.rabbitmq = request.getfixturevalue("amqp_url")
        if "nats" in wanted:
            services.nats = request.getfixturevalue("nats_url")
        if "postgres" in wanted:
            admin = request.getfixturevalue("postgres_url")
            services.postgres = stack.enter_context(postgres_database(admin))
        if "mysql" in wanted:
            admin = request.getfixturevalue("mysql_url")
            services.mysql = stack.enter_context(mysql_database(admin))
        yield services


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [_param(name) for name in PAGES])
def test_every_block_runs(name: str, services: Services, tmp_path: Path) -> None:
    done = run_page(name, tmp_path, services)
    print(done.stdout)
    assert done.returncode == 0, f"{name}: a block failed\n{done.stdout}\n{done.stderr[-6000:]}"
    assert " 0 blocks ran, 0 skipped" not in done.stdout, f"{name}: no code block ran"
