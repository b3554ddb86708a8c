"""`retrysafe proxy` refuses a bad command line with one line and exit code 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from retrysafe.cli import app


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--upstream", "ftp://files.example"], "http:// or https://"),
        (["--upstream", "http://127.0.0.1:3000?x=1"], "no query"),
        (["--upstream", "http://127.0.0.1:3000", "--store", "nosuch://"], "Unknown store URL"),
        (["--upstream", "http://127.0.0.1:3000", "--store", "memory://", "--wait", "-1"], "wait"),
    ],
    ids=["scheme", "query", "store", "negative-wait"],
)
def test_bad_options_exit_2_with_one_line(arguments: list[str], message: str) -> None:
    """A wrong upstream, store URL or setting is one `error:` line and exit code 2."""
    result = CliRunner().invoke(app, ["proxy", *arguments])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_b8_anonymous_takes_reject_or_shared_only() -> None:
    """`--anonymous` accepts reject or shared; anything else is a usage error (exit 2)."""
    result = CliRunner().invoke(
        app, ["proxy", "--upstream", "http://127.0.0.1:3000", "--anonymous", "maybe"]
    )
    assert result.exit_code == 2, result.output
    assert "reject" in result.stderr
    assert "shared" in result.stderr
