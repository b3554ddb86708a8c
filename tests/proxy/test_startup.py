"""`retrysafe proxy` at start: it refuses an upstream URL with a user or password, and a scope
header that is no header name (B8), with one line and exit code 2, and prints no password."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from retrysafe.cli import app
from tests.proxy.conftest import proxy_command

_RUN = 30.0
"""How long a proxy that must fail at once may run before the test gives up on it."""
UPSTREAM = "http://ada:s3cret-pw@127.0.0.1:9"
"""An upstream URL with a password (never reached: the proxy does not call it at start)."""


@pytest.mark.parametrize("userinfo", ["ada:s3cret-pw@", "ada@"])
def test_b8_an_upstream_url_with_a_user_or_password_exits_2(userinfo: str) -> None:
    """An upstream URL with a user or password is one `error:` line and exit code 2 (a
    password shown as `***`): httpx would send them as Basic credentials with every forwarded
    request, in place of each client's own Authorization (which scopes its keys, B8)."""
    command = proxy_command("--upstream", f"http://{userinfo}127.0.0.1:9", "--store",
                            "memory://", "--port", "0")  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=_RUN, check=False)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: The upstream URL takes no user or password")
    assert result.stderr.count("\n") == 1
    assert "s3cret-pw" not in result.stderr
    assert ("ada:***@" in result.stderr) == ("s3cret-pw" in userinfo)
    assert result.stdout == ""


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
