"""Find the services the tests need, or start throwaway ones, then run a command.

    python scripts/services.py -- pytest -q

For PostgreSQL, Redis, MariaDB and NATS: use the URL in RETRYSAFE_TEST_POSTGRES_URL,
RETRYSAFE_TEST_REDIS_URL, RETRYSAFE_TEST_MYSQL_URL or RETRYSAFE_TEST_NATS_URL when set; otherwise
the usual loopback port when something answers there; otherwise start a throwaway server from
the local `postgres`, `redis-server`, `mariadbd` or `nats-server` binary in a temporary directory
(scripts/throwaway.py), and stop it when the command ends. RabbitMQ is used when reachable
(RETRYSAFE_TEST_AMQP_URL or 127.0.0.1:5672); it is not started here.

For Redis Cluster: use RETRYSAFE_TEST_REDIS_CLUSTER_URL when set and start nothing; otherwise
start a throwaway cluster of 3 masters and 3 replicas from the local `redis-server` binary on
loopback ports of our choosing (scripts/redis_cluster.py joins the nodes and waits until the
cluster serves), pass its seeds as RETRYSAFE_TEST_REDIS_CLUSTER_URL
(`redis+cluster://127.0.0.1:PORT,.../`, the masters) and its nodes as
RETRYSAFE_TEST_REDIS_CLUSTER_NODES (a JSON list of {"port", "pid", "role"}, so failover tests
can kill a master), and stop every node when the command ends. The node timeout is short and a
replica may always take over, so failover tests do not wait long for a promotion.

What cannot be found is reported loudly; the tests then skip, or fail under CI=true.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlsplit

import redis_cluster
from throwaway import (
    free_port,
    throwaway_mariadb,
    throwaway_nats,
    throwaway_postgres,
    throwaway_redis,
    wait_for_port,
)

__all__ = ["free_port", "wait_for_port"]  # for the tests' cluster harness

DEFAULTS = {
    "RETRYSAFE_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:5432/test",
    "RETRYSAFE_TEST_REDIS_URL": "redis://127.0.0.1:6379/15",
    "RETRYSAFE_TEST_MYSQL_URL": "mysql://root@127.0.0.1:3306/test",
    "RETRYSAFE_TEST_NATS_URL": "nats://127.0.0.1:4222",
    "RETRYSAFE_TEST_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
}
CLUSTER_URL = "RETRYSAFE_TEST_REDIS_CLUSTER_URL"
CLUSTER_NODES = "RETRYSAFE_TEST_REDIS_CLUSTER_NODES"
CLUSTER_MASTERS = 3
CLUSTER_BUS_OFFSET = 10000
CLUSTER_NODE_TIMEOUT_MS = 2000
CLUSTER_START_TIMEOUT = 30.0


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


def port_free(port: int) -> bool:
    """Return whether a loopback port can be bound right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_ports(count: int) -> list[int]:
    """Return free loopback ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    taken: set[int] = set()
    for _ in range(1000):
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if port < 55535 and not {port, bus} & taken and port_free(bus):
            ports.append(port)
            taken |= {port, bus}
            if len(ports) == count:
                return ports
    raise RuntimeError(f"found no {count} free ports with free cluster bus ports")


def start_cluster_node(binary: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """Start one empty cluster node in a directory of its own (for its nodes.conf)."""
    directory = workdir / str(port)
    directory.mkdir()
    options = {
        "port": str(port),
        "bind": "127.0.0.1",
        "dir": str(directory),
        "cluster-enabled": "yes",
        "cluster-config-file": "nodes.conf",
        # Failover tests kill a master: its replica notices in seconds and may always take over.
        "cluster-node-timeout": str(CLUSTER_NODE_TIMEOUT_MS),
        "cluster-replica-validity-factor": "0",
        # Replicas sync at once instead of waiting 5 s for more replicas to share the transfer.
        "repl-diskless-sync-delay": "0",
        "save": "",
        "appendonly": "no",
    }
    arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
    return subprocess.Popen([binary, *arguments], stdout=subprocess.DEVNULL)


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """Stop servers at once (a master stopping alone may wait for its replicas), then reap them."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def throwaway_redis_cluster(workdir: Path) -> Iterator[dict[str, str]]:
    """Start a Redis Cluster of 3 masters and 3 replicas; yield the variables that describe it."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("no local 'redis-server' binary")
    ports = cluster_ports(2 * CLUSTER_MASTERS)
    masters, replicas = ports[:CLUSTER_MASTERS], ports[CLUSTER_MASTERS:]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            processes.append(start_cluster_node(binary, port, workdir))
        for port, process in zip(ports, processes, strict=True):
            wait_for_port(port, process, f"Redis Cluster node {port}")
        redis_cluster.create_cluster(masters, replicas, timeout=CLUSTER_START_TIMEOUT)
        nodes = [
            {"port": port, "pid": process.pid, "role": "master" if port in masters else "replica"}
            for port, process in zip(ports, processes, strict=True)
        ]
        seeds = ",".join(f"127.0.0.1:{port}" for port in masters)
        yield {CLUSTER_URL: f"redis+cluster://{seeds}/", CLUSTER_NODES: json.dumps(nodes)}
    finally:
        stop_all(processes)


def provide_redis_cluster(env: dict[str, str], stack: contextlib.ExitStack) -> None:
    """Use the Redis Cluster in the environment, or start one; set or clear its variables."""
    # Only a cluster started here has node processes known to be its own (failover tests kill them).
    env.pop(CLUSTER_NODES, None)
    if env.get(CLUSTER_URL):
        print(f"services: Redis Cluster at {env[CLUSTER_URL]} (given; nothing started)")
        return
    started = time.monotonic()
    try:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="retrysafe-")))
        env.update(stack.enter_context(throwaway_redis_cluster(workdir)))
    except (RuntimeError, OSError) as error:
        print(
            f"services: !!! no Redis Cluster: RETRYSAFE_TEST_REDIS_CLUSTER_URL is unset and one"
            f" could not be started ({error}); its tests will skip (or fail under CI=true) !!!"
        )
        return
    print(
        f"services: started a throwaway Redis Cluster (3 masters, 3 replicas) at"
        f" {env[CLUSTER_URL]} in {time.monotonic() - started:.1f} s"
    )


def main() -> int:
    """Set the service URLs in the environment, starting servers if needed, and run the command."""
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__)
        return 2
    env = dict(os.environ)
    starters: dict[str, tuple[int, Callable[[Path], AbstractContextManager[str]], str]] = {
        "RETRYSAFE_TEST_POSTGRES_URL": (5432, throwaway_postgres, "PostgreSQL"),
        "RETRYSAFE_TEST_REDIS_URL": (6379, throwaway_redis, "Redis"),
        "RETRYSAFE_TEST_MYSQL_URL": (3306, throwaway_mariadb, "MariaDB"),
        "RETRYSAFE_TEST_NATS_URL": (4222, throwaway_nats, "NATS"),
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
        provide_redis_cluster(env, stack)
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
