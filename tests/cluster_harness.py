"""A private Redis Cluster per test, for tests that freeze, kill, promote and reshard its nodes,
and an HTTP load to run while they do.

The session's shared cluster (RETRYSAFE_TEST_REDIS_CLUSTER_URL) must stay whole for the tests
after this one, so a test that breaks a cluster starts its own: 3 masters and 3 replicas from
the local `redis-server`, built by the very functions scripts/services.py uses
(`throwaway_redis_cluster`, `start_cluster_node`) and joined by scripts/redis_cluster.py. Every
wait here polls a condition against a deadline; nothing sleeps to let something happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis.crc import key_slot

from retrysafe import Identity
from tests.conftest import service_missing

# services.py imports its sibling as `redis_cluster`, so the folder itself goes on the path
# (last: nothing there may shadow an installed module).
_SCRIPTS = str(Path(__file__).resolve().parent.parent / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.append(_SCRIPTS)

import redis_cluster  # noqa: E402  (scripts/redis_cluster.py, found through the path above)
import services  # noqa: E402  (scripts/services.py)

__all__ = [
    "CLIENT_TIMEOUT",
    "EffectApp",
    "Load",
    "Node",
    "PrivateCluster",
    "private_cluster",
    "slot_of",
    "wait_for",
]

WAIT_SECONDS = 15.0
"""The longest any step of the harness waits for the cluster to reach a state."""
CLIENT_TIMEOUT = 8.0
"""Seconds a client waits for one answer: a request that takes longer has hung."""
KEY_BOUND = 15.0
"""Seconds a client keeps retrying one key before it gives up."""
RETRY_PAUSE = 0.05
"""Seconds between a client's retries of one key."""


def wait_for(problem: Callable[[], str | None], what: str, seconds: float = WAIT_SECONDS) -> None:
    """Poll until `problem()` finds none; past `seconds`, fail with the last problem found."""
    deadline = time.monotonic() + seconds
    while (found := problem()) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: {found}")
        time.sleep(0.02)


def slot_of(identity: Identity) -> int:
    """The hash slot of `identity`'s record in a Redis store: its key carries the hashed
    identity as its hash tag (B34), whatever the prefix."""
    return key_slot(f"{{{identity.digest()}}}".encode())


@dataclass(frozen=True)
class Node:
    """One node of the private cluster: its port, process id and cluster node id."""

    port: int
    pid: int
    id: str


@dataclass
class PrivateCluster:
    """A running private cluster; `masters[i]` is followed by `replicas[i]` until a failover."""

    url: str
    masters: list[Node]
    replicas: list[Node]
    workdir: Path
    _frozen: set[int] = field(default_factory=set)
    _dead: set[int] = field(default_factory=set)
    _started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @staticmethod
    def command(node: Node, *args: str | int) -> redis_cluster.Reply:
        """Send one command to `node` and return its reply."""
        return redis_cluster.command(node.port, *args)

    def live(self) -> list[Node]:
        """Every node neither killed nor frozen."""
        nodes = [*self.masters, *self.replicas]
        return [n for n in nodes if n.pid not in self._dead and n.pid not in self._frozen]

    def freeze(self, node: Node) -> None:
        """Stop `node`'s process with SIGSTOP: it keeps its sockets but answers and acks nothing."""
        os.kill(node.pid, signal.SIGSTOP)
        self._frozen.add(node.pid)

    def thaw(self, node: Node) -> None:
        """Let a frozen node run again (SIGCONT)."""
        os.kill(node.pid, signal.SIGCONT)
        self._frozen.discard(node.pid)

    def kill(self, node: Node) -> None:
        """Kill `node`'s process with SIGKILL (`kill -9`): whatever it did not send is gone."""
        os.kill(node.pid, signal.SIGKILL)
        self._dead.add(node.pid)

    def cut_replication(self, master: Node) -> None:
        """Close `master`'s links to its replicas, as a partition would: from now on what it
        writes reaches no replica, not even the kernel buffers of a frozen one."""
        killed = self.command(master, "CLIENT", "KILL", "TYPE", "replica")
        assert isinstance(killed, int), killed
        assert killed > 0, f"node {master.port} had no replica link to close"

    def take_over(self, replica: Node) -> None:
        """Promote `replica` with CLUSTER FAILOVER TAKEOVER (no vote: its master is dead), then
        wait until every live node sees it serve its slots and the cluster is ok."""
        self.command(replica, "CLUSTER", "FAILOVER", "TAKEOVER")
        wait_for(lambda: self._not_master(replica), f"node {replica.port} to be a master")
        index = next(i for i, r in enumerate(self.replicas) if r == replica)
        self.masters[index], self.replicas[index] = replica, self.masters[index]

    def _not_master(self, replica: Node) -> str | None:
        for node in self.live():
            info = redis_cluster.fields(redis_cluster.text(node.port, "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok":
                return f"node {node.port}: cluster_state:{info.get('cluster_state')}"
            flags, _ = redis_cluster.topology(node.port)[replica.id]
            if "master" not in flags:
                return f"node {node.port} sees {replica.port} as {','.join(sorted(flags))}"
        return None

    def add_replica(self, master: Node) -> Node:
        """Start a new empty node, make it `master`'s replica, and wait until it is in sync
        (how an operator replaces a dead node); it becomes that shard's replica."""
        binary = shutil.which("redis-server")
        assert binary is not None
        (port,) = services.cluster_ports(1)
        process = services.start_cluster_node(binary, port, self.workdir)
        self._started.append(process)
        services.wait_for_port(port, process, f"Redis Cluster node {port}")
        node = Node(port, process.pid, redis_cluster.text(port, "CLUSTER", "MYID"))
        redis_cluster.command(port, "CLUSTER", "MEET", "127.0.0.1", master.port)
        wait_for(lambda: self._unknown(node, master), f"node {port} to meet node {master.port}")
        redis_cluster.command(port, "CLUSTER", "REPLICATE", master.id)
        wait_for(lambda: self._not_in_sync(node), f"node {port} to replicate {master.port}")
        index = self.masters.index(master)
        self.replicas[index] = node
        return node

    @staticmethod
    def _unknown(node: Node, master: Node) -> str | None:
        view = redis_cluster.topology(node.port)
        if master.id not in view or "handshake" in view[master.id][0]:
            return f"node {node.port} does not know node {master.port} yet"
        return None

    @staticmethod
    def _not_in_sync(node: Node) -> str | None:
        info = redis_cluster.fields(redis_cluster.text(node.port, "INFO", "replication"))
        if info.get("master_link_status") != "up" or info.get("master_sync_in_progress") != "0":
            return f"replica {node.port}: master_link_status:{info.get('master_link_status')}"
        return None

    def slots_served(self, master: Node) -> frozenset[int]:
        """The slots `master` serves now, as the first live node sees it."""
        reply: Any = self.command(self.live()[0], "CLUSTER", "SLOTS")
        served: set[int] = set()
        for first, last, owner, *_replicas in reply:  # owner: [host, port, id]
            if owner[1] == master.port:
                served.update(range(first, last + 1))
        return frozenset(served)

    def move_slot(
        self,
        slot: int,
        source: Node,
        target: Node,
        *,
        batch: int = 10,
        between: Callable[[], None] = lambda: None,
    ) -> int:
        """Move `slot` from `source` to `target` as `redis-cli --cluster reshard` does, keys
        in batches, calling `between()` after each; return how many keys moved. Commands on
        the slot meanwhile are redirected with ASK (keys already moved), then with MOVED."""
        self.command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
        self.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
        moved = 0
        while keys := self.command(source, "CLUSTER", "GETKEYSINSLOT", slot, batch):
            assert isinstance(keys, list)
            names = [str(key) for key in keys]
            self.command(source, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *names)
            moved += len(names)
            between()
        # The target first, so no node sends a client back and forth between the two.
        for node in [target, source, *(m for m in self.masters if m not in (source, target))]:
            self.command(node, "CLUSTER", "SETSLOT", slot, "NODE", target.id)
        return moved

    def stop_started(self) -> None:
        """Thaw what is frozen (a stopped process ignores SIGTERM) and stop the nodes this
        harness started itself; services.py stops the first six."""
        for pid in list(self._frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen.clear()
        services.stop_all(self._started)


@contextlib.contextmanager
def private_cluster(workdir: Path) -> Iterator[PrivateCluster]:
    """Start a private 3-master, 3-replica cluster in `workdir`; stop every node afterwards.

    Skips loudly (fails under CI=true) when `redis-server` is not installed.
    """
    if shutil.which("redis-server") is None:
        service_missing(
            "redis-server", "a private Redis Cluster needs the `redis-server` binary on PATH"
        )
    with services.throwaway_redis_cluster(workdir) as env:
        nodes = [
            (int(node["port"]), int(node["pid"]), str(node["role"]))
            for node in json.loads(env[services.CLUSTER_NODES])
        ]
        ids = {port: redis_cluster.text(port, "CLUSTER", "MYID") for port, _, _ in nodes}
        masters = [Node(port, pid, ids[port]) for port, pid, role in nodes if role == "master"]
        replicas = [Node(port, pid, ids[port]) for port, pid, role in nodes if role != "master"]
        cluster = PrivateCluster(env[services.CLUSTER_URL], masters, replicas, workdir)
        try:
            yield cluster
        finally:
            cluster.stop_started()


class EffectApp:
    """An ASGI app whose POST runs the side effect: it counts executions per Idempotency-Key.

    A key that starts with `gated` sets `entered` and waits (at most 10 s) for `gate`.
    """

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.entered, self.gate = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Count one execution of the request's key and answer 201."""
        key = dict(scope["headers"]).get(b"idempotency-key", b"").decode()
        while (await receive()).get("more_body"):
            pass
        with self._lock:
            self.runs[key] += 1
            body = b'{"run": %d}' % self.runs[key]
        if key.startswith("gated"):
            self.entered.set()
            for _ in range(1000):
                if self.gate.is_set():
                    break
                await asyncio.sleep(0.01)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class Attempt:
    """One request a client sent: the phase it started in, whether its key lives on the victim
    shard, how it ended (a status code, or the client error's name), and in which phase."""

    phase: str
    victim: bool
    outcome: str
    key: str
    ended: str


class Load:
    """Clients sending keyed POSTs concurrently, each key retried with the same key after a
    503, a timeout or a connection error until it gets a 2xx or `KEY_BOUND` passes.

    Args:
        url: the app's base URL.
        on_victim: whether a key's record lives on the shard the test breaks.
        workers: how many clients send at once.
    """

    def __init__(self, url: str, on_victim: Callable[[str], bool], workers: int = 4) -> None:
        self.phase = "before"
        self.attempts: list[Attempt] = []
        self.finals: dict[str, int] = {}
        self.replayed: dict[str, bool] = {}
        self._url, self.on_victim = url, on_victim
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._abandoning = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def client(self) -> httpx.Client:
        """A client that sends small writes at once (TCP_NODELAY) and waits `CLIENT_TIMEOUT`."""
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        transport = httpx.HTTPTransport(socket_options=nodelay)
        return httpx.Client(base_url=self._url, timeout=CLIENT_TIMEOUT, transport=transport)

    def _run(self, worker: int | str) -> None:
        """Send new keys until stopped; a worker named by a key sends that key alone."""
        with self.client() as client:
            number = 0
            while not self._stopping.is_set():
                key = worker if isinstance(worker, str) else f"w{worker}-{number}"
                number += 1
                status = self.send(client, key).status_code
                with self._lock:
                    self.finals[key] = status
                if isinstance(worker, str):
                    return

    def send_aside(self, key: str) -> None:
        """Send `key` from a client of its own, until a 2xx or `KEY_BOUND` (`stop` waits)."""
        thread = threading.Thread(target=self._run, args=(key,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def send(self, client: httpx.Client, key: str) -> httpx.Response:
        """POST `key` until a 2xx or `KEY_BOUND`; return the last answer (status 0: none)."""
        deadline = time.monotonic() + KEY_BOUND
        while True:
            phase = self.phase
            try:
                response = client.post("/effect", headers={"Idempotency-Key": key}, content=b"{}")
                outcome = str(response.status_code)
            except httpx.HTTPError as error:
                response, outcome = httpx.Response(0), type(error).__name__
            with self._lock:
                self.attempts.append(Attempt(phase, self.on_victim(key), outcome, key, self.phase))
            if response.is_success or time.monotonic() > deadline or self._abandoning.is_set():
                return response
            time.sleep(RETRY_PAUSE)

    def within(self, phase: str, outcome: str | None = None) -> int:
        """How many requests for the victim shard's keys started and ended in `phase`, so."""
        with self._lock:
            return sum(
                a.victim and a.phase == a.ended == phase and outcome in (None, a.outcome)
                for a in self.attempts
            )

    def outcomes(self) -> Counter[tuple[str, bool, str]]:
        """Every attempt's (phase, victim, outcome), counted."""
        with self._lock:
            return Counter((a.phase, a.victim, a.outcome) for a in self.attempts)

    def stop(self, *, abandon: bool = False) -> None:
        """Let every client finish its key (or, to `abandon`, give it up), then stop it."""
        if abandon:
            self._abandoning.set()
        self._stopping.set()
        for thread in self._threads:
            thread.join(KEY_BOUND + 2 * CLIENT_TIMEOUT)
            assert not thread.is_alive(), "a client never finished its key"

    def replay_all(self) -> None:
        """Send every key that got a 2xx once more, as a client that lost the answer does."""
        self.phase = "replay"
        keys = sorted(k for k, status in self.finals.items() if 200 <= status < 300)
        chunks = [keys[i::4] for i in range(4)]

        def replay(chunk: list[str]) -> None:
            with self.client() as client:
                for key in chunk:
                    replayed = self.send(client, key).headers.get("idempotent-replayed") == "true"
                    with self._lock:
                        self.replayed[key] = replayed

        with ThreadPoolExecutor(len(chunks)) as pool:  # each send ends within its bounds
            list(pool.map(replay, chunks))
