"""Make empty Redis Cluster nodes one cluster and wait until it serves, with nothing but sockets.

services.py starts the `redis-server` processes; `create_cluster` joins them the way
`redis-cli --cluster create --cluster-replicas 1` does, without needing `redis-cli` or a client
library: every node gets a config epoch of its own, each master takes an equal share of the 16384
slots, the first node meets the others, and each replica follows its master. It then polls every
node until all of them see the same topology, every slot is served, and every replica's link to
its master is up, so the first test never meets a cluster that is still forming.

Commands go in plain text, unless sent inside `over_tls(context)`: then every command of this
module, `create_cluster`'s too, goes over TLS, for a cluster whose nodes serve only TLS
(scripts/redis_cluster_tls.py starts those).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import BinaryIO, TypeAlias

SLOTS = 16384
POLL_INTERVAL = 0.05
UNHEALTHY_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})

Reply: TypeAlias = "str | int | list[Reply] | None"

# A context variable, not a parameter: the functions keep their signatures for their callers.
_TLS: ContextVar[ssl.SSLContext | None] = ContextVar("redis_cluster_tls", default=None)


class ClusterError(RuntimeError):
    """A node refused a command, or the cluster did not come together in time."""


@contextlib.contextmanager
def over_tls(context: ssl.SSLContext) -> Iterator[None]:
    """Within the block, send every command of this module over TLS, verified by `context`."""
    token = _TLS.set(context)
    try:
        yield
    finally:
        _TLS.reset(token)


def _connect(port: int) -> socket.socket:
    """Connect to the node on a loopback port, over TLS inside `over_tls`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    context = _TLS.get()
    if context is None:
        return sock
    try:
        return context.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise


def command(port: int, *args: str | int) -> Reply:
    """Send one command to the node on a loopback port and return its reply."""
    parts = [str(arg).encode() for arg in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with _connect(port) as sock, sock.makefile("rb") as reader:
        sock.sendall(request)
        try:
            return _read_reply(reader)
        except ClusterError as error:
            raise ClusterError(f"port {port}: {' '.join(map(str, args[:2]))}: {error}") from None


def _read_reply(reader: BinaryIO) -> Reply:
    """Read one RESP2 reply; an error reply raises ClusterError."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ClusterError("the connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise ClusterError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        return None if length < 0 else reader.read(length + 2)[:-2].decode()
    if kind == b"*":
        length = int(rest)
        return None if length < 0 else [_read_reply(reader) for _ in range(length)]
    raise ClusterError(f"unexpected reply {line!r}")


def text(port: int, *args: str) -> str:
    """Send a command whose reply is text (CLUSTER INFO, CLUSTER NODES, INFO...)."""
    reply = command(port, *args)
    if not isinstance(reply, str):
        raise ClusterError(f"port {port}: {' '.join(args)} replied {reply!r}, not text")
    return reply


def fields(info: str) -> dict[str, str]:
    """The `name:value` lines of a CLUSTER INFO or INFO reply."""
    lines = (line.partition(":") for line in info.splitlines())
    return {name: value for name, colon, value in lines if colon}


def topology(port: int) -> dict[str, tuple[frozenset[str], str]]:
    """The node's view of the cluster: node id -> (flags, the id of its master or '-')."""
    view = {}
    for line in text(port, "CLUSTER", "NODES").splitlines():
        node_id, _address, flags, master, *_rest = line.split()
        view[node_id] = (frozenset(flags.split(",")), master)
    return view


def slot_range(index: int, masters: int) -> range:
    """The slots the index-th of `masters` masters serves: equal shares, all slots covered."""
    return range(index * SLOTS // masters, (index + 1) * SLOTS // masters)


def create_cluster(masters: list[int], replicas: list[int], *, timeout: float) -> None:
    """Join empty nodes into one cluster, replicas[i] following masters[i]; wait until it serves.

    Raises ClusterError when a node refuses a step or the cluster is not serving in `timeout`.
    """
    deadline = time.monotonic() + timeout
    nodes = [*masters, *replicas]
    for epoch, port in enumerate(nodes, start=1):
        # Distinct epochs from the start: no collision to resolve before the slots settle.
        command(port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
    for index, port in enumerate(masters):
        # ADDSLOTS rather than ADDSLOTSRANGE: the latter needs Redis 7.
        command(port, "CLUSTER", "ADDSLOTS", *slot_range(index, len(masters)))
    for index, port in enumerate(nodes):
        # Every pair meets, so no node waits for gossip to learn of the others.
        for other in nodes[index + 1 :]:
            command(port, "CLUSTER", "MEET", "127.0.0.1", other)
    ids = {port: text(port, "CLUSTER", "MYID") for port in nodes}
    _wait_until(lambda: _unmet(nodes, ids), "every node to know every other", deadline)
    for master, replica in zip(masters, replicas, strict=True):
        command(replica, "CLUSTER", "REPLICATE", ids[master])
    _wait_until(lambda: _not_serving(masters, replicas, ids), "the cluster to serve", deadline)


def _wait_until(problem: Callable[[], str | None], what: str, deadline: float) -> None:
    """Poll until `problem` finds none; past the deadline, raise with the last one it found."""
    while (found := problem()) is not None:
        if time.monotonic() > deadline:
            raise ClusterError(f"gave up waiting for {what}: {found}")
        time.sleep(POLL_INTERVAL)


def _unmet(nodes: list[int], ids: dict[int, str]) -> str | None:
    """Name a node that does not yet know every other node past the handshake, if any."""
    for port in nodes:
        view = topology(port)
        for other, node_id in ids.items():
            if node_id not in view or "handshake" in view[node_id][0]:
                return f"node {port} does not know node {other} yet"
    return None


def _not_serving(masters: list[int], replicas: list[int], ids: dict[int, str]) -> str | None:
    """Name the first thing that keeps the cluster from serving as formed, if any."""
    expected = {ids[port]: ("master", "-") for port in masters}
    expected.update({ids[r]: ("slave", ids[m]) for m, r in zip(masters, replicas, strict=True)})
    for port in [*masters, *replicas]:
        info = fields(text(port, "CLUSTER", "INFO"))
        if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
            return f"node {port}: cluster_state:{info.get('cluster_state')}"
        for node_id, (flags, master) in topology(port).items():
            role, master_id = expected.get(node_id, ("unknown", "-"))
            if role not in flags or master != master_id or flags & UNHEALTHY_FLAGS:
                return f"node {port} sees node {node_id} as {','.join(sorted(flags))} of {master}"
    for port in replicas:
        link = fields(text(port, "INFO", "replication")).get("master_link_status")
        if link != "up":
            return f"replica {port}: master_link_status:{link}"
    for port in masters:
        connected = fields(text(port, "INFO", "replication")).get("connected_slaves")
        if connected != "1":
            return f"master {port}: connected_slaves:{connected}"
    return None
