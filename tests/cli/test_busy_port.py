"""A port in use is one line on stderr and exit 1, for every serving command, never a
traceback (uvicorn's used to reach the terminal with exit 3)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-c", "from retrysafe.cli import main; main()"]


@pytest.fixture
def busy() -> Iterator[int]:
    """A loopback port something listens on."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def test_proxy_on_a_busy_port_is_one_line_and_exit_1(busy: int) -> None:
    """`retrysafe proxy --port BUSY`: `error: cannot listen on ...`, exit 1, nothing else."""
    args = ["proxy", "--upstream", "http://127.0.0.1:9", "--store", "memory://"]
    result = subprocess.run(
        [*CLI, *args, "--port", str(busy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{busy}: Address already in use\n"
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["serve-demo", "proxy --metrics-port"])
def test_other_serving_commands_on_a_busy_port_are_one_line_and_exit_1(
    busy: int, tmp_path: Path, command: str
) -> None:
    """`serve-demo --port BUSY` and `proxy --metrics-port BUSY` say the same, exit 1."""
    if command == "serve-demo":
        args = ["serve-demo", "--port", str(busy), "--store", f"sqlite:///{tmp_path / 'd.db'}"]
        option = ""
    else:
        args = ["proxy", "--upstream", "http://127.0.0.1:9", "--store", "memory://"]
        args += ["--port", "0", "--metrics-port", str(busy)]
        option = "--metrics-port: "
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"error: {option}cannot listen on 127.0.0.1:{busy}: Address already in use\n"
    )
