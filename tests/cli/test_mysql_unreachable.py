"""A MySQL store that cannot be reached fails within seconds, in one line with the driver's own
reason, wherever the CLI opens a store: the keys commands, serve-demo and demo. Also a server
that accepts the connection and never greets (a wrong port), which PyMySQL alone would wait on
forever."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.cli.test_postgres_unreachable import run
from tests.conftest import unique_name
from tests.servers import refused_port

TIMED_OUT = "timed out"


def assert_one_line(result: subprocess.CompletedProcess[str], start: str, reason: str) -> None:
    """Exit 1 with one `error:` line that starts with `start` and gives the driver's reason."""
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {start}"), result.stderr
    assert reason in result.stderr


@pytest.fixture
def missing_database(mysql_url: str) -> tuple[str, str, str]:
    """A URL on the real server naming a database that does not exist, and the reason."""
    name = unique_name("rs_absent")
    parts = urlsplit(mysql_url)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    return url, "MySQL failed: ", f"Unknown database '{name}'"


@pytest.fixture
def refused() -> tuple[str, str, str]:
    """A URL on a loopback port where nothing listens, and the reason."""
    return f"mysql://root@127.0.0.1:{refused_port()}/test", "MySQL is unavailable: ", "refused"


@pytest.fixture
def silent() -> Iterator[tuple[str, str, str]]:
    """A URL on a port that accepts connections and never says a word, and the reason."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"mysql://root@127.0.0.1:{server.getsockname()[1]}/test"
        yield url, "MySQL is unavailable: ", TIMED_OUT


@pytest.mark.parametrize("server", ["missing_database", "refused", "silent"])
def test_keys_on_an_unreachable_mysql_give_the_drivers_reason(
    request: pytest.FixtureRequest, server: str
) -> None:
    """`keys stats` says why the server cannot be used, in one line, exit 1, in bounded time."""
    url, start, reason = request.getfixturevalue(server)
    assert_one_line(run("keys", "stats", "--store", url), start, reason)


def test_serve_demo_and_demo_on_a_silent_mysql_give_up_at_the_connect_timeout(
    silent: tuple[str, str, str],
) -> None:
    """`serve-demo` and `demo` probe their MySQL store the same way before anything starts."""
    url, start, reason = silent
    assert_one_line(run("serve-demo", "--port", "0", "--store", url), start, reason)
    assert_one_line(run("demo", "--requests", "1", "--store", url), start, reason)
