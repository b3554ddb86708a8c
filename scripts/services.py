"""Find the services the tests need, or start throwaway ones, then run a command.

    python scripts/services.py -- pytest -q

For PostgreSQL and Redis: use the URL in RETRYSAFE_TEST_POSTGRES_URL / RETRYSAFE_TEST_REDIS_URL
when set; otherwise the usual loopback port when something answers there; otherwise start a
throwaway server from the local `postgres` / `redis-server` binaries in a temporary directory,
and stop it when the command ends. RabbitMQ is used when reachable (RETRYSAFE_TEST_AMQP_URL or
127.0.0.1:5672); it is not started here. What cannot be found is reported loudly; the tests then
skip, or fail under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

DEFAULTS = {
    "RETRYSAFE_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:5432/test",
    "RETRYSAFE_TEST_REDIS_URL": "redis://127.0.0.1:6379/15",
    "RETRYSAFE_TEST_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
}


def reachable(url: str, default_port: int) -> bool:
    """Return whether a TCP connection to the URL's host and port succeeds."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


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


def main() -> int:
    """Set the service URLs in the environment, starting servers if needed, and run the command."""
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__)
        return 2
    env = dict(os.environ)
    starters = {
        "RETRYSAFE_TEST_POSTGRES_URL": (5432, throwaway_postgres, "PostgreSQL"),
        "RETRYSAFE_TEST_REDIS_URL": (6379, throwaway_redis, "Redis"),
    }
    with contextlib.ExitStack() as stack:
        for variable, (port, starter, name) in starters.items():
            url = env.setdefault(variable, DEFAULTS[variable])
            if reachable(url, port):
                print(f"services: {name} at {url}")
                continue
            try:
                workdir = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="retrysafe-"))
                )
                env[variable] = stack.enter_context(starter(workdir))
                print(f"services: started a throwaway {name} at {env[variable]}")
            except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
                print(
                    f"services: !!! {name} is not reachable at {url} and could not be started"
                    f" ({error}); its tests will skip (or fail under CI=true) !!!"
                )
        amqp = env.setdefault("RETRYSAFE_TEST_AMQP_URL", DEFAULTS["RETRYSAFE_TEST_AMQP_URL"])
        if reachable(amqp, 5672):
            print(f"services: RabbitMQ at {amqp}")
        else:
            print(
                f"services: !!! RabbitMQ is not reachable at {amqp}; its tests will skip"
                " (or fail under CI=true) !!!"
            )
        sys.stdout.flush()
        return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
