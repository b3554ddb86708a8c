"""`retrysafe proxy` at start: it prints no upstream password, and refuses a scope header that
is no header name (B8) with one line and exit code 2."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from retrysafe.cli import app
from tests.proxy.conftest import ANNOUNCED, proxy_command, stop_proxies
from tests.proxy.conftest import Proxy as RunningProxy
from tests.servers import announced

_RUN = 30.0
"""How long a proxy that must fail at once may run before the test gives up on it."""
UPSTREAM = "http://ada:s3cret-pw@127.0.0.1:9"
"""An upstream URL with a password (never reached: the proxy does not call it at start)."""


def test_the_upstream_password_is_not_printed_at_start() -> None:
    """The line the proxy prints at start shows the upstream's password as `***`."""
    process = subprocess.Popen(
        proxy_command("--upstream", UPSTREAM, "--store", "memory://", "--port", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = announced(process.stdout, ANNOUNCED, _RUN)[0]
    finally:
        stop_proxies([RunningProxy("", process)])
    assert "-> http://ada:***@127.0.0.1:9 (store memory://)" in line
    assert "s3cret-pw" not in line


def test_the_upstream_password_is_not_in_an_error_line() -> None:
    """An upstream URL refused at start is named with its password as `***`."""
    result = CliRunner().invoke(app, ["proxy", "--upstream", UPSTREAM + "/?x=1"])
    assert result.exit_code == 2, result.output
    assert "no query" in result.stderr
    assert "s3cret-pw" not in result.stderr


@pytest.mark.parametrize("name", ["bad:name", "", "X API Key", "X-Key\u00e9"])
def test_b8_a_scope_header_that_is_no_header_name_exits_2(name: str) -> None:
    """`--scope-header` that can never match a header (not an RFC 9110 token) is one `error:`
    line and exit code 2, before the proxy listens."""
    command = proxy_command("--upstream", "http://127.0.0.1:9", "--store", "memory://",
                            "--port", "0", "--scope-header", name)  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=_RUN, check=False)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: The scope header is a header name")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""
