"""`retrysafe --version`: the installed distribution's version, from its one source."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from typer.testing import CliRunner

from retrysafe.cli import app

CLI = [sys.executable, "-c", "from retrysafe.cli import main; main()"]


def test_version_prints_the_installed_distributions_version() -> None:
    """`retrysafe --version` prints `retrysafe X.Y.Z` as importlib.metadata has it, exit 0."""
    completed = subprocess.run(
        [*CLI, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == f"retrysafe {metadata.version('retrysafe')}\n"
    assert completed.stderr == ""


def test_version_runs_no_command_and_help_lists_it(runner: CliRunner) -> None:
    """--version is eager (no command needed, none run) and the top-level help shows it."""
    result = runner.invoke(app, ["--version", "keys", "list"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("retrysafe ")
    assert "--version" in runner.invoke(app, ["--help"]).stdout
