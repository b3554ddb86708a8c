"""A PostgreSQL store that cannot be reached fails within seconds with the driver's own
reason, not the pool's "couldn't get a connection after 10.00 sec", wherever the CLI opens a
store: the keys commands, serve-demo and demo."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import unique_name
from tests.servers import refused_port

CLI = [sys.executable, "-c", "from retrysafe.cli import main; main()"]
BOUND = 60  # seconds: a generous bound on the whole command, start-up included
POOL_MESSAGE = "couldn't get a connection"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `retrysafe ARGS` to its end, bounded by BOUND seconds."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=BOUND, check=False)


def assert_one_line(result: subprocess.CompletedProcess[str], reason: str) -> None:
    """Exit 1 with one `error:` line that gives the driver's reason."""
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: PostgreSQL is unavailable: ")
    assert reason in result.stderr
    assert POOL_MESSAGE not in result.stderr


@pytest.fixture
def missing_database(postgres_url: str) -> tuple[str, str]:
    """A URL on the real server naming a database that does not exist, and the reason."""
    name = unique_name("rs_absent")
    parts = urlsplit(postgres_url)
    return urlunsplit(parts._replace(path=f"/{name}")), f'database "{name}" does not exist'


@pytest.fixture
def refused() -> tuple[str, str]:
    """A URL on a loopback port where nothing listens, and the reason."""
    return f"postgresql://postgres@127.0.0.1:{refused_port()}/test", "Connection refused"


@pytest.fixture
def silent() -> Iterator[tuple[str, str]]:
    """A URL on a port that accepts connections and never answers, and the reason."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"postgresql://postgres@127.0.0.1:{server.getsockname()[1]}/test", "timeout"


@pytest.mark.parametrize("server", ["missing_database", "refused"])
@pytest.mark.parametrize("command", [["stats"], ["list"], ["show", "order-1"], ["purge"]])
def test_keys_on_an_unreachable_postgres_give_the_drivers_reason(
    request: pytest.FixtureRequest, server: str, command: list[str]
) -> None:
    """`keys` says why the server cannot be reached, in one line, exit 1, in bounded time."""
    url, reason = request.getfixturevalue(server)
    assert_one_line(run("keys", *command, "--store", url), reason)


def test_keys_on_a_silent_server_give_up_at_the_connect_timeout(
    silent: tuple[str, str],
) -> None:
    """A server that accepts the connection and never answers: the driver's timeout (2 s,
    not the pool's 10), one line, exit 1."""
    url, reason = silent
    assert_one_line(run("keys", "stats", "--store", url), reason)


def test_serve_demo_and_demo_on_an_unreachable_postgres_give_the_drivers_reason(
    missing_database: tuple[str, str], refused: tuple[str, str]
) -> None:
    """`serve-demo` and `demo` check their store the same way before anything starts."""
    url, reason = missing_database
    assert_one_line(run("serve-demo", "--port", "0", "--store", url), reason)
    url, reason = refused
    assert_one_line(run("demo", "--requests", "1", "--store", url), reason)
