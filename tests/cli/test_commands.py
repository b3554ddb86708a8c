"""The CLI as a whole: help with examples, one-line errors, serve-demo, demo, the proxy stub."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from retrysafe.cli import app
from tests.servers import announced

COMMANDS = [
    ["demo"],
    ["serve-demo"],
    ["proxy"],
    ["keys"],
    ["keys", "list"],
    ["keys", "show"],
    ["keys", "delete"],
    ["keys", "purge"],
    ["keys", "stats"],
]
CLI = [sys.executable, "-c", "from retrysafe.cli import main; main()"]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(runner: CliRunner, command: list[str]) -> None:
    """`--help` works for every command and shows how to call it."""
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    assert "retrysafe " in result.stdout.split("Usage:", 1)[1]
    assert "Example" in result.stdout


@pytest.mark.parametrize(
    ("store", "code"),
    [
        ("mysql://localhost/db", 2),
        ("sqlite://host/x.db", 2),
        ("redis://127.0.0.1:6379/0?bogus=1", 2),
        ("sqlite:////nonexistent-dir-for-retrysafe/x.db", 1),
        ("postgresql://postgres@127.0.0.1:1/test?connect_timeout=1&pool_timeout=1", 1),
        ("redis://127.0.0.1:1/0?connect_timeout=1", 1),
    ],
)
def test_store_errors_are_one_line_and_a_non_zero_exit(
    runner: CliRunner, store: str, code: int
) -> None:
    """A bad store URL (exit 2) or an unreachable store (exit 1) is one clear line, no traceback."""
    result = runner.invoke(app, ["keys", "stats", "--store", store])
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output


def test_a_bad_duration_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    """--older-than refuses what is not a duration."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    result = runner.invoke(app, ["keys", "list", "--store", store, "--older-than", "soon"])
    assert result.exit_code == 2
    assert "not a duration" in result.output


def test_the_console_script_reports_errors_in_one_line(tmp_path: Path) -> None:
    """The installed entry point, run as a process, prints one line and exits non-zero."""
    completed = subprocess.run(
        [
            *CLI,
            "keys",
            "list",
            "--store",
            "postgresql://postgres@127.0.0.1:1/test?connect_timeout=1&pool_timeout=1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    assert completed.stderr.count("\n") == 1
    assert completed.stderr.startswith("error: ")


def test_demo_json_reports_no_duplicate_with_keys(runner: CliRunner, tmp_path: Path) -> None:
    """`retrysafe demo --json` exits 0 and reports both passes, counted from the API's table."""
    store = f"sqlite:///{tmp_path / 'demo.db'}"
    result = runner.invoke(
        app,
        ["demo", "--requests", "12", "--loss", "0.4", "--seed", "3", "--store", store, "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["seed"] == 3
    with_keys = report["runs"]["with_keys"]
    assert with_keys["charges"] == with_keys["intended"] == 12
    assert with_keys["duplicate_charges"] == 0
    assert report["runs"]["without_keys"]["intended"] == 12


def test_demo_prints_a_side_by_side_table(runner: CliRunner) -> None:
    """Without --json the demo prints the table with both passes, on a fresh SQLite store."""
    result = runner.invoke(app, ["demo", "--requests", "8", "--seed", "5"])
    assert result.exit_code == 0, result.output
    for text in ("without keys", "with keys", "charges made", "duplicate charges", "time taken"):
        assert text in result.stdout


def test_serve_demo_serves_the_api_until_interrupted(tmp_path: Path) -> None:
    """`retrysafe serve-demo` serves the payments API with keys honoured, and stops on Ctrl+C."""
    store = f"sqlite:///{tmp_path / 'serve.db'}"
    process = subprocess.Popen(
        [*CLI, "serve-demo", "--port", "0", "--store", store, "--latency-ms", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    announcement = b""
    try:
        assert process.stdout is not None
        listening = announced(process.stdout, r"Demo payments API on (http://\S+)", 30)
        announcement, url = listening.string.encode(), listening[1]
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"{url}/health", trust_env=False).status_code == 200
                break
            except httpx.TransportError:
                assert process.poll() is None, "serve-demo exited early"
                assert time.monotonic() < deadline, "serve-demo did not start in 30 s"
                time.sleep(0.1)
        headers = {"Authorization": "Bearer t", "Idempotency-Key": '"k-1"'}
        body = {"customer": "ada", "amount": 5, "currency": "EUR"}
        with httpx.Client(base_url=url, headers=headers, trust_env=False) as client:
            first = client.post("/payments", json=body)
            second = client.post("/payments", json=body)
            listed = client.get("/payments").json()["payments"]
        assert (first.status_code, second.status_code) == (201, 201)
        assert second.headers["Idempotent-Replayed"] == "true"
        assert len(listed) == 1
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        output = announcement + output
    assert process.returncode == 0  # a server's Ctrl+C is its graceful stop (docs/cli.md)
    assert b"Demo payments API on" in output
    assert b"Traceback" not in output


def test_serve_demo_on_a_busy_port_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    """A port already in use is one error line and exit 1."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(
            app, ["serve-demo", "--port", str(port), "--store", f"sqlite:///{tmp_path / 'x.db'}"]
        )
    assert result.exit_code == 1
    assert "cannot listen" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
