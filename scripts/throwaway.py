"""Throwaway servers for the tests, started from local binaries in a temporary directory.

scripts/services.py starts one of these when a service is not reachable on its usual port; each
is a context manager that yields the server's URL and stops the server when it exits.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """Return a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    """Wait up to 30 s for a server we started to accept connections."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not start listening on port {port} within 30 s")


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root; run it as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root and there is no 'postgres' user to run PostgreSQL"
        ) from None
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def throwaway_postgres(workdir: Path) -> Iterator[str]:
    """Start a PostgreSQL server from local binaries; yield its URL."""
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if not initdb or not postgres:
        raise RuntimeError("no local 'initdb'/'postgres' binaries")
    data = workdir / "pgdata"
    data.mkdir()
    prefix = _as_postgres_user()
    if prefix:
        shutil.chown(workdir, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            *prefix,
            postgres,
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(workdir),
            "-h",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, "PostgreSQL")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def throwaway_redis(workdir: Path) -> Iterator[str]:
    """Start a Redis server from the local binary; yield its URL."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("no local 'redis-server' binary")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, "Redis")
        yield f"redis://127.0.0.1:{port}/15"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _as_root_user() -> list[str]:
    """MariaDB refuses to run as root unless told to: say so when we are root."""
    return ["--user=root"] if os.geteuid() == 0 else []


@contextlib.contextmanager
def throwaway_mariadb(workdir: Path) -> Iterator[str]:
    """Start a MariaDB server from local binaries with an empty database `test`; yield its URL.

    It trusts every client (`--skip-grant-tables`): it listens on loopback only, for the tests.
    """
    install, server = shutil.which("mariadb-install-db"), shutil.which("mariadbd")
    if not install or not server:
        raise RuntimeError("no local 'mariadb-install-db'/'mariadbd' binaries")
    data = workdir / "mariadb"
    done = subprocess.run(
        [install, "--no-defaults", f"--datadir={data}", "--skip-test-db", *_as_root_user()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    if done.returncode:
        error = done.stderr.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"mariadb-install-db exited with code {done.returncode}: {error}")
    (data / "test").mkdir()  # a database is a directory: `test`, empty
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={workdir / 'mariadb.sock'}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            "--skip-grant-tables",
            *_as_root_user(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, "MariaDB")
        yield f"mysql://root@127.0.0.1:{port}/test"
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def throwaway_nats(workdir: Path) -> Iterator[str]:
    """Start a NATS server with JetStream from the local binary; yield its URL."""
    binary = shutil.which("nats-server")
    if not binary:
        raise RuntimeError("no local 'nats-server' binary")
    port = free_port()
    process = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir / "nats")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, "NATS")
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
