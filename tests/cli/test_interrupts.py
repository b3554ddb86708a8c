"""Ctrl+C, as a real SIGINT to a real process, gives the exit code docs/cli.md states:
the servers (`serve-demo`, `proxy`) stop gracefully and exit 0 (SIGTERM too); `demo` and
the `keys` commands are interrupted and exit 130."""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import announced, refused_port

CLI = [sys.executable, "-c", "from retrysafe.cli import main; main()"]
START = 60.0  # seconds a command gets to be ready
STOP = 30.0  # seconds it gets to exit once signalled
Ready = Callable[[subprocess.Popen[bytes]], bool]  # whether a started command is running yet
DEMO_ANNOUNCED = r"Demo payments API on (http://\S+)"  # serve-demo's first line, once it listens


def interrupt(args: list[str], ready: Ready, sig: signal.Signals) -> tuple[int, str]:
    """Start `retrysafe ARGS`, wait until `ready` says it is running, send `sig`; return its
    exit code and what it wrote on stderr."""
    process = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START
        while not ready(process):
            assert process.poll() is None, process.communicate(timeout=STOP)[1].decode()
            assert time.monotonic() < deadline, f"{args[0]} was not ready in {START} s"
            time.sleep(0.05)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=STOP)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stderr.decode()


def answers(url: str) -> Ready:
    """Ready once an HTTP request to `url` gets any response (the server is serving)."""

    def ready(_: subprocess.Popen[bytes]) -> bool:
        try:
            httpx.get(url, trust_env=False, timeout=2)
        except httpx.TransportError:
            return False
        return True

    return ready


def answers_where_announced(pattern: str, path: str) -> Ready:
    """Ready once the server, started with `--port 0`, has printed the URL it listens on (the
    first group of `pattern`) and a request to that URL + `path` gets any response."""
    url: list[str] = []

    def ready(process: subprocess.Popen[bytes]) -> bool:
        if not url:
            assert process.stdout is not None
            url.append(announced(process.stdout, pattern, START)[1])
        return answers(url[0] + path)(process)

    return ready


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_serve_demo_gracefully_with_exit_0(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """serve-demo, serving, stops on Ctrl+C (or SIGTERM) after its shutdown: exit 0."""
    store = f"sqlite:///{tmp_path / 'serve.db'}"
    code, stderr = interrupt(
        ["serve-demo", "--port", "0", "--store", store],
        answers_where_announced(DEMO_ANNOUNCED, "/health"),
        sig,
    )
    assert code == 0, stderr
    assert "Application shutdown complete" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_the_proxy_gracefully_with_exit_0(sig: signal.Signals) -> None:
    """The proxy, serving, stops on Ctrl+C (or SIGTERM) after its shutdown: exit 0."""
    upstream = f"http://127.0.0.1:{refused_port()}"  # nothing there: the proxy answers 502
    code, stderr = interrupt(
        ["proxy", "--upstream", upstream, "--port", "0", "--store", "memory://"],
        answers_where_announced(r"^retrysafe proxy: (http://\S+) ", "/anything"),
        sig,
    )
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_ctrl_c_interrupts_the_demo_with_exit_130(tmp_path: Path) -> None:
    """The demo, once its API has charged payments, is interrupted by Ctrl+C: exit 130."""
    database = tmp_path / "demo.db"

    def recording(_: subprocess.Popen[bytes]) -> bool:
        if not database.exists():
            return False
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            try:
                (count,) = db.execute("SELECT COUNT(*) FROM retrysafe_demo_payments").fetchone()
            except sqlite3.OperationalError:  # not created yet, or busy
                return False
        return bool(count)

    # 5000 payments: still running when the signal comes, few enough tasks to cancel at once.
    code, stderr = interrupt(
        ["demo", "--requests", "5000", "--store", f"sqlite:///{database}"],
        recording,
        signal.SIGINT,
    )
    assert code == 130, stderr
    assert "Traceback" not in stderr


@pytest.fixture
def silent_postgres() -> Iterator[tuple[str, Ready]]:
    """A PostgreSQL URL whose server accepts connections and never answers, and a readiness
    check that returns once the command has connected (it then waits inside its connect)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(START)
        accepted: list[socket.socket] = []

        def connected(_: subprocess.Popen[bytes]) -> bool:
            accepted.append(server.accept()[0])
            return True

        port = server.getsockname()[1]
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/x?connect_timeout=60", connected
        finally:
            for connection in accepted:
                connection.close()


def test_ctrl_c_interrupts_a_keys_command_with_exit_130(
    silent_postgres: tuple[str, Ready],
) -> None:
    """`keys stats`, waiting for a PostgreSQL server that never answers, is interrupted by
    Ctrl+C: exit 130, nothing printed."""
    url, connected = silent_postgres
    code, stderr = interrupt(["keys", "stats", "--store", url], connected, signal.SIGINT)
    assert code == 130, stderr
    assert stderr == ""


def test_ctrl_c_before_a_server_serves_exits_130(silent_postgres: tuple[str, Ready]) -> None:
    """serve-demo interrupted while it still checks its store (a PostgreSQL server that never
    answers) has not served yet: exit 130, like any interrupted command."""
    url, connected = silent_postgres
    args = ["serve-demo", "--port", "0", "--store", url]
    code, stderr = interrupt(args, connected, signal.SIGINT)
    assert code == 130, stderr
    assert stderr == ""


def test_ctrl_c_right_after_the_proxy_prints_its_address_stops_it() -> None:
    """A Ctrl+C sent as the proxy prints its address, before it serves, stops it gracefully:
    it is kept until serving starts (raised as KeyboardInterrupt during the garbage collection
    that follows start-up, it was dropped, and the proxy served on)."""
    args = ["proxy", "--upstream", "http://127.0.0.1:9", "--store", "memory://"]
    process = subprocess.Popen(
        [*CLI, *args, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], START)
        assert readable, f"the proxy printed nothing in {START} s"
        assert process.stdout.readline().startswith(b"retrysafe proxy: http://")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=STOP)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert "Traceback" not in stderr.decode()
