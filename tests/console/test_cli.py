"""`retrysafe console` as a real process: the token from a file or generated and printed, 401
without it, a token file that is unfit refused, and Ctrl+C exits 0."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from retrysafe import open_store
from tests.servers import announced

CLI = [sys.executable, "-c", "from retrysafe.cli import main; main()"]
STOP = 30.0
START = 60.0
ANNOUNCED = r"^retrysafe console on (http://\S+/) "  # its first line, once it listens


def _sqlite_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'console.db'}"
    store = open_store(url)  # the console reads an existing store, as the keys commands do
    try:
        store.stats()  # creates the file
    finally:
        store.close()
    return url


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(process: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=STOP)
    return process.returncode, stdout.decode(), stderr.decode()


def test_the_token_file_opens_the_console_and_ctrl_c_exits_0(tmp_path: Path) -> None:
    """With --token-file, the API answers 401 without the token and 200 with it, the token is
    never printed, and Ctrl+C stops the server with exit status 0."""
    token = "file-token-abcdefghijklmnop"
    (tmp_path / "token").write_text(token + "\n")
    args = ["console", "--store", _sqlite_store(tmp_path), "--port", "0"]
    process = _start([*args, "--token-file", str(tmp_path / "token")])
    first = ""
    try:
        assert process.stdout is not None
        listening = announced(process.stdout, ANNOUNCED, START)
        first, url = listening.string, listening[1] + "api/summary"
        assert httpx.get(url, trust_env=False).status_code == 401
        bearer = {"authorization": f"Bearer {token}"}
        answer = httpx.get(url, headers=bearer, trust_env=False)
        assert answer.status_code == 200
        assert answer.json()["namespaces"] == []
    finally:
        code, stdout, stderr = _stop(process)
    assert code == 0, stderr
    assert token not in first + stdout + stderr
    assert re.search(r"http://127\.0\.0\.1:[1-9][0-9]*/ ", first), first  # the port it bound
    assert "Traceback" not in stderr


def test_a_generated_token_is_printed_in_the_login_url(tmp_path: Path) -> None:
    """Without --token-file, the console prints a login URL whose token opens the API."""
    args = ["console", "--store", _sqlite_store(tmp_path), "--port", "0"]
    process = _start(args)
    try:
        assert process.stdout is not None
        line = announced(process.stdout, ANNOUNCED, START)  # printed once the socket listens
        login = re.search(r"\?token=([\w-]{32,})", line.string)
        assert login is not None, line.string
        url = f"{line[1]}api/summary"
        bearer = {"authorization": f"Bearer {login[1]}"}
        assert httpx.get(url, headers=bearer, trust_env=False).status_code == 200
    finally:
        code, _, stderr = _stop(process)
    assert code == 0, stderr


def test_an_unfit_token_file_is_refused_with_exit_2(tmp_path: Path) -> None:
    """A token file that is too short, or missing, is refused on one line with exit status 2."""
    (tmp_path / "short").write_text("abc\n")
    store = _sqlite_store(tmp_path)
    for name in ("short", "missing"):
        started = time.monotonic()
        result = subprocess.run(
            [
                *CLI,
                "console",
                "--store",
                store,
                "--port",
                "0",
                "--token-file",
                str(tmp_path / name),
            ],
            capture_output=True,
            text=True,
            timeout=STOP,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert time.monotonic() - started < STOP


def test_b35_the_public_origin_is_checked_and_names_the_login_url(tmp_path: Path) -> None:
    """`--public-origin` that is not an http(s) origin is refused (exit 2); a good one is the
    login URL printed, and makes the login's cookie Secure."""
    store = _sqlite_store(tmp_path)
    args = ["console", "--store", store, "--port", "0", "--public-origin"]
    for bad in ("ftp://console.example", "https://console.example/path"):
        refused = subprocess.run(
            [*CLI, *args, bad], capture_output=True, text=True, timeout=STOP, check=False
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("error: --public-origin: "), refused.stderr
    process = _start([*args, "https://Console.Example:443/"])
    try:
        assert process.stdout is not None
        line = announced(process.stdout, ANNOUNCED, START)
        login = re.search(r"Open https://console\.example/\?token=([\w-]{32,}) ", line.string)
        assert login is not None, line.string
        answer = httpx.get(f"{line[1]}?token={login[1]}", trust_env=False)
        assert answer.status_code == 303
        assert "; secure" in answer.headers["set-cookie"].lower()
    finally:
        code, _, stderr = _stop(process)
    assert code == 0, stderr
