"""Shared fixtures: real PostgreSQL, Redis, Redis Cluster, MariaDB, RabbitMQ and NATS, found or
skipped loudly.

`make test` finds the servers on their usual loopback ports or starts throwaway ones, and passes
their URLs in RETRYSAFE_TEST_POSTGRES_URL, RETRYSAFE_TEST_REDIS_URL, RETRYSAFE_TEST_MYSQL_URL,
RETRYSAFE_TEST_AMQP_URL and RETRYSAFE_TEST_NATS_URL.
It starts a Redis Cluster too, passing its seeds in RETRYSAFE_TEST_REDIS_CLUSTER_URL and its
nodes' ports, processes and roles in RETRYSAFE_TEST_REDIS_CLUSTER_NODES.
A test that needs a server that is not reachable is skipped with a loud message, except under
CI=true, where it fails: CI must never go green by skipping the real backends.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Literal, NoReturn, TypedDict
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get(
    "RETRYSAFE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("RETRYSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("RETRYSAFE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MYSQL_URL = os.environ.get("RETRYSAFE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
NATS_URL = os.environ.get("RETRYSAFE_TEST_NATS_URL", "nats://127.0.0.1:4222")
REDIS_CLUSTER_URL = os.environ.get("RETRYSAFE_TEST_REDIS_CLUSTER_URL", "")
REDIS_CLUSTER_NODES = os.environ.get("RETRYSAFE_TEST_REDIS_CLUSTER_NODES", "")

_IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# pytest-xdist's workers start with COLUMNS=80 in their environment. rich fixes a console's width
# from COLUMNS when the console is made, so the CLI's module-level consoles would stay 80 wide
# for every test, whatever width a test's CliRunner asks for: drop it before they are made.
os.environ.pop("COLUMNS", None)

# A process started with Ctrl+C (SIGINT) ignored, as a script's background job is, passes that on
# to every process it starts, and Python then never raises KeyboardInterrupt: the tests that send
# Ctrl+C to the CLI's processes need it delivered. Handled here, it is default again in children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
_missing: dict[str, str] = {}


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> str:
    """Return `url` if its server answers; otherwise skip loudly, or fail under CI=true."""
    if not _reachable(url, default_port):
        service_missing(name, f"{name} is not reachable at {url}")
    return url


def service_missing(name: str, message: str) -> NoReturn:
    """Skip loudly, or fail under CI=true, because a real service the test needs is missing."""
    _missing[name] = message
    if _IN_CI:
        pytest.fail(f"{message}; CI=true, so a missing service fails the run.", pytrace=False)
    pytest.skip(f"SERVICE MISSING: {message}")


class ClusterNodeInfo(TypedDict):
    """A Redis Cluster node scripts/services.py started: its port, process id and first role."""

    port: int
    pid: int
    role: Literal["master", "replica"]


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The (host, port) seed nodes of a `redis+cluster://HOST:PORT[,HOST:PORT...]/` URL."""
    from retrysafe.stores._async.redis_cluster import cluster_seeds as seeds_of

    return seeds_of(url.split("?", 1)[0])


@pytest.fixture
def anyio_backend() -> str:
    """Run `@pytest.mark.anyio` tests on asyncio, the loop the servers use (anyio's own default
    before 4.5 was every backend, trio too: tests/flow/test_trio.py runs on trio itself)."""
    return "asyncio"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a real PostgreSQL server."""
    return require_service("PostgreSQL", POSTGRES_URL, 5432)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a real Redis server."""
    return require_service("Redis", REDIS_URL, 6379)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The URL of a real RabbitMQ broker."""
    return require_service("RabbitMQ", AMQP_URL, 5672)


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """The URL of a real MySQL or MariaDB server (`mysql://user[:password]@host[:port]/db`)."""
    return require_service("MariaDB", MYSQL_URL, 3306)


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The URL of a real NATS server with JetStream."""
    return require_service("NATS", NATS_URL, 4222)


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """The `redis+cluster://` URL of a real Redis Cluster, its seeds the masters."""
    if not REDIS_CLUSTER_URL:
        service_missing(
            "Redis Cluster",
            "Redis Cluster is not configured: RETRYSAFE_TEST_REDIS_CLUSTER_URL is unset"
            " (scripts/services.py starts one when `redis-server` is installed)",
        )
    seeds = cluster_seeds(REDIS_CLUSTER_URL)
    if not any(_reachable(f"redis://{host}:{port}", 6379) for host, port in seeds):
        service_missing("Redis Cluster", f"Redis Cluster is not reachable at {REDIS_CLUSTER_URL}")
    return REDIS_CLUSTER_URL


@pytest.fixture(scope="session")
def redis_cluster_nodes(redis_cluster_url: str) -> list[ClusterNodeInfo]:
    """The nodes of the Redis Cluster scripts/services.py started, so tests can kill a master."""
    if not REDIS_CLUSTER_NODES:
        service_missing(
            "Redis Cluster nodes",
            f"the nodes of the Redis Cluster at {redis_cluster_url} are not known:"
            " RETRYSAFE_TEST_REDIS_CLUSTER_NODES is set only for a cluster scripts/services.py"
            " started",
        )
    nodes: list[ClusterNodeInfo] = [
        {"port": int(node["port"]), "pid": int(node["pid"]), "role": node["role"]}
        for node in json.loads(REDIS_CLUSTER_NODES)
    ]
    if any(node["role"] not in ("master", "replica") for node in nodes):
        raise ValueError(f"RETRYSAFE_TEST_REDIS_CLUSTER_NODES has an unknown role: {nodes}")
    return nodes


def unique_name(prefix: str = "rs_test") -> str:
    """Return a name no other test run uses: tables and key prefixes stay apart."""
    return f"{prefix}_{secrets.token_hex(6)}"


@contextlib.contextmanager
def fresh_store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a fresh, empty store on `backend`; drop what it created afterwards.

    PostgreSQL stores get a table and Redis stores a key prefix of their own, so tests running
    at the same time on the same servers never see each other's records.
    """
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}?timeout=30"
    elif backend == "postgres":
        base = request.getfixturevalue("postgres_url")
        table = unique_name()
        try:
            yield f"{base}?table={table}"
        finally:
            drop_postgres_tables(base, table)
    elif backend == "mysql":
        base = request.getfixturevalue("mysql_url")
        table = unique_name()
        try:
            yield f"{base}?table={table}"
        finally:
            drop_mysql_tables(base, table)
    elif backend == "redis":
        base = request.getfixturevalue("redis_url")
        prefix = unique_name()
        try:
            yield f"{base}?prefix={prefix}"
        finally:
            delete_redis_prefix(base, prefix)
    elif backend in ("redis-cluster", "redis-cluster-wait"):
        base = request.getfixturevalue("redis_cluster_url")
        prefix = unique_name()
        # `-wait`: every write confirmed by the master's replica (`min_replicas`).
        wait = "&min_replicas=1&replica_timeout_ms=2000" if backend.endswith("-wait") else ""
        try:
            yield f"{base}?prefix={prefix}{wait}"
        finally:
            delete_redis_cluster_prefix(base, prefix)
    else:  # pragma: no cover - a typo in a parametrization
        raise ValueError(backend)


def drop_postgres_tables(url: str, *tables: str) -> None:
    """Drop the tables a test created, and nothing else."""
    import psycopg

    with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
        for table in tables:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')


def drop_mysql_tables(url: str, *tables: str) -> None:
    """Drop the tables a test created (and the side tables named after them), and nothing else."""
    import pymysql

    parts = urlsplit(url.split("?", 1)[0])
    conn = pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        autocommit=True,
    )
    try:
        with conn.cursor() as cursor:
            for table in tables:
                cursor.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = DATABASE() AND table_name LIKE %s",
                    (f"{table}%",),  # unique: its `_` wildcards match only its own tables
                )
                for (name,) in cursor.fetchall():
                    cursor.execute(f"DROP TABLE IF EXISTS `{name}`")
    finally:
        conn.close()


def delete_redis_prefix(url: str, prefix: str) -> None:
    """Delete the Redis keys under a prefix a test used, and nothing else."""
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def delete_redis_cluster_prefix(url: str, prefix: str) -> None:
    """Delete the keys under a prefix a test used, on every master of a Redis Cluster."""
    from redis.cluster import ClusterNode, RedisCluster

    nodes = [ClusterNode(host, port) for host, port in cluster_seeds(url)]
    client = RedisCluster(startup_nodes=nodes)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


_SERVICE_FIXTURES = frozenset(
    {
        "postgres_url",
        "redis_url",
        "mysql_url",
        "amqp_url",
        "nats_url",
        "redis_cluster_url",
        "redis_cluster_nodes",
    }
)
_SERVICE_PARAMS = frozenset({"postgres", "redis", "mysql", "rabbitmq", "nats"})
_SERVICE_MARKERS = ("postgres", "redis", "mysql", "rabbitmq", "nats")


# `make test` runs the suite on several pytest-xdist workers with `--dist loadfile`: the tests of
# one file run on one worker, in order. The documentation's pages (one file) flush Redis database
# 14 and serve on the ports they name, so they must not overlap. (xdist's `loadgroup` would group
# across files, but under pytest 9 its group suffix on node ids is ignored: it groups nothing.)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real server `services`, so `-m "not services"` runs the rest.

    A test needs one when it asks for a server's URL fixture, is parametrized on a server backend
    (`[postgres]`, `[redis-async]`...), or carries a backend's marker.
    """
    for item in items:
        callspec = getattr(item, "callspec", None)
        ids = set(re.split(r"[-/]", callspec.id)) if callspec is not None else set()
        fixtures = set(getattr(item, "fixturenames", ()))
        if (
            fixtures & _SERVICE_FIXTURES
            or ids & _SERVICE_PARAMS
            or any(item.get_closest_marker(name) for name in _SERVICE_MARKERS)
        ):
            item.add_marker(pytest.mark.services)


# pytest-timeout fails a test that runs past `timeout` (pyproject.toml) by raising in it, which
# cannot reach a wait that started after it fired (a fixture's teardown), one in C that never
# returns to Python, or an event loop whose task took the raise. Past HARD_LIMIT seconds, teardown
# included, the process prints every thread's stack and exits: the run ends red, with the place
# that hung, instead of never ending (pytest-xdist reports the test its worker crashed in). The
# run's own process (not an xdist worker, which stays up until the run ends everywhere) is
# watched for SHUTDOWN_LIMIT seconds after it (an interpreter waiting on a thread that never ends).
HARD_LIMIT = 300.0
SHUTDOWN_LIMIT = 120.0
_dump_to: list[int] = []  # a copy of stderr as the run started: a test's capture replaces fd 2
_deadline: list[float] = []  # when the test running now is stopped, while one is


def _watch(seconds: float) -> None:
    faulthandler.dump_traceback_later(seconds, exit=True, file=_dump_to[0])


def pytest_configure(config: pytest.Config) -> None:
    """Keep a copy of the run's own stderr for the watchdog's stack dumps."""
    _dump_to.append(os.dup(sys.__stderr__.fileno() if sys.__stderr__ else 2))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Run a test with the watchdog armed for HARD_LIMIT seconds."""
    _deadline[:] = [time.monotonic() + HARD_LIMIT]
    _watch(HARD_LIMIT)
    try:
        return (yield)
    finally:
        _deadline.clear()
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(trylast=True)
def pytest_exception_interact(node: pytest.Item | pytest.Collector) -> None:
    """Arm the watchdog again for the rest of the test: pytest's faulthandler plugin cancels
    every pending dump when a test fails (for a debugger), and a teardown may then hang. Not
    under `--pdb`: a debugging session takes the time it takes."""
    if _deadline and not node.config.getoption("usepdb", False):
        _watch(max(_deadline[0] - time.monotonic(), 1.0))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Watch the run's own process as it shuts down (threads it waits for, atexit hooks)."""
    if not hasattr(config, "workerinput"):
        _watch(SHUTDOWN_LIMIT)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Note a skip for a missing service, also when an xdist worker ran the test."""
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
        if "SERVICE MISSING: " in message:
            detail = message.split("SERVICE MISSING: ", 1)[1]
            _missing.setdefault(detail, detail)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly which real services were missing, so a skip is never silent."""
    if _missing:
        terminalreporter.write_sep("!", "SERVICES MISSING: their tests were skipped", red=True)
        for message in dict.fromkeys(_missing.values()):
            terminalreporter.write_line(f"  {message}", red=True)


@pytest.fixture(autouse=True)
def _root_logging_as_it_was() -> Iterator[None]:
    """Take off the root logger the handlers a test left there: building a Litestar app with its
    default logging config adds one that writes to the stream stderr was then (pytest's capture,
    closed after the test), and a warning from any later thread (a held outcome's) failed on it,
    printing "Logging error" into the run's output."""
    root = logging.getLogger()
    kept = list(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in kept:
            root.removeHandler(handler)
