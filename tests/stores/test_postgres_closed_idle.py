"""Pooled connections that went away while idle cost the PostgreSQL store's calls at most one
failure (B20), not one per connection: after a server restart, a failover, a PgBouncer restart,
`pg_terminate_backend`, or a network that forgot its connections.

Both ways are real. The server's: `pg_terminate_backend` ends every backend of the store (found
by its `application_name`), which says goodbye on each connection; the store finds those in its
pool closed before it lends them, so no call fails. A network's: a relay in front of the test's
PostgreSQL forgets its connections as a NAT or firewall whose state expired does, saying nothing
until the client next sends, and then resetting; the one call that meets such a connection fails,
and the store replaces the other idle ones, so no other call does. Both faces, with and without
the async store's auto-pipeline; the pool's own calls (`stats`) among them.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from retrysafe import Identity, Store, StoreUnavailableError
from tests.conftest import drop_postgres_tables, unique_name
from tests.stores.conftest import OpenStore, concrete

pytestmark = pytest.mark.postgres

LEASE = 30.0
RETENTION = 3600.0
POOLED = 4
BOUND = 10.0
"""Seconds any wait here may take before the test fails."""
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def ident(key: str) -> Identity:
    """An identity in this module's namespace."""
    return Identity("postgres-closed-idle", "tenant", key)


class ForgettingRelay:
    """A TCP relay to PostgreSQL that can `forget` the connections it carries, as a NAT or
    firewall whose state expired: each is closed toward the server, and its client hears
    nothing (no farewell, no end of stream) until it next sends, which is answered with a
    reset. Connections made after `forget` are relayed."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._carried: list[tuple[socket.socket, socket.socket]] = []
        self._forgotten: set[socket.socket] = set()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="forgetting-relay").start()

    def forget(self) -> int:
        """Forget every connection carried now; return how many."""
        with self._lock:
            pairs, self._carried = self._carried, []
            self._forgotten.update(client for client, _ in pairs)
        for _, upstream in pairs:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)  # the server sees the client leave
        return len(pairs)

    def close(self) -> None:
        """Stop listening and close everything."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target, timeout=BOUND)
            except OSError:
                return  # closed
            upstream.settimeout(None)
            with self._lock:
                self._carried.append((client, upstream))
                self._sockets += (client, upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink, client), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while (data := source.recv(65536)) and client not in self._forgotten:
                sink.sendall(data)
        if client not in self._forgotten:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        elif source is client:  # the client sent on a forgotten connection: reset it
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            client.close()


@pytest.fixture
def table(postgres_url: str) -> Iterator[str]:
    """A fresh table, dropped afterwards."""
    name = unique_name()
    yield name
    drop_postgres_tables(postgres_url, name)


@pytest.fixture
def forgetting(postgres_url: str) -> Iterator[tuple[str, ForgettingRelay]]:
    """The test server's URL through a forgetting relay, and the relay."""
    parts = urlsplit(postgres_url)
    relay = ForgettingRelay(parts.hostname or "127.0.0.1", parts.port or 5432)
    login = parts.netloc.rpartition("@")[0]
    netloc = f"{login}@127.0.0.1:{relay.port}" if login else f"127.0.0.1:{relay.port}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc)), relay
    finally:
        relay.close()


def with_query(url: str, query: str) -> str:
    """`url` with `query` (`a=1&b=2`) added to its own."""
    return f"{url}{'&' if urlsplit(url).query else '?'}{query}"


def filled(store: Store) -> None:
    """Use the store, then wait (bounded) until its pool holds `POOLED` idle connections."""
    claim = store.claim(ident("before"), "fp", lease=LEASE, retention=RETENTION)
    store.complete(ident("before"), claim.token, b"done", retention=RETENTION)
    pool = concrete(store)._pool
    deadline = time.monotonic() + BOUND
    while pool.get_stats().get("pool_available", 0) < POOLED:
        assert time.monotonic() < deadline, f"the pool did not fill in {BOUND} s"
        time.sleep(0.01)


def failures_of_calls(store: Store, rounds: int) -> int:
    """Run `rounds` of a claim, its completion, a read and a count, each on new keys; return
    how many calls failed with StoreUnavailableError. Every claim that ran is its key's first."""
    failed = 0
    for round_ in range(rounds):
        key = ident(f"after-{round_}")
        try:
            claim = store.claim(key, "fp", lease=LEASE, retention=RETENTION)
            assert claim.acquired
            store.complete(key, claim.token, b"done", retention=RETENTION)
            record = store.get(key)
            assert record is not None
            assert record.outcome == b"done"
            store.stats()
        except StoreUnavailableError:
            failed += 1
    return failed


def terminate_backends(store: Store, postgres_url: str, application_name: str) -> int:
    """End every backend of `application_name`; wait (bounded) until the server has closed
    each of the store's idle connections, pooled and batching (the client has its end of
    stream)."""
    inner = concrete(store)
    idle = list(inner._pool._pool)  # psycopg_pool's idle connections, all of them
    assert len(idle) >= POOLED
    lanes = inner._runner._lanes if inner._runner is not None else []
    idle += [lane.link.conn for lane in lanes if lane.link is not None]
    hangups = select.poll()
    for conn in idle:
        hangups.register(conn.pgconn.socket, select.POLLRDHUP)
    with psycopg.connect(postgres_url.split("?", 1)[0], autocommit=True) as conn:
        find = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        pids = [pid for (pid,) in conn.execute(find, (application_name,)).fetchall()]
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    closed: set[int] = set()
    deadline = time.monotonic() + BOUND
    while len(closed) < len(idle):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the server did not close the connections in {BOUND} s"
        for fd, _ in hangups.poll(remaining * 1000):
            closed.add(fd)
            hangups.unregister(fd)
    return len(pids)


@pytest.mark.parametrize("autopipeline", ["true", "false"])
def test_b20_pooled_connections_the_server_terminated_while_idle_fail_no_call_but_one(
    open_face: OpenStore, postgres_url: str, table: str, autopipeline: str
) -> None:
    """The server ends every connection of the store while the pool holds them idle (as a
    restart or a failover does): no call fails after it, not one per pooled connection, as
    the store finds them closed before it lends them."""
    name = unique_name("rs_idle")
    query = f"table={table}&pool_min={POOLED}&pool_max={POOLED}&autopipeline={autopipeline}"
    store = open_face(with_query(postgres_url, f"{query}&application_name={name}"))
    filled(store)
    assert terminate_backends(store, postgres_url, name) >= POOLED
    assert failures_of_calls(store, 2 * POOLED) == 0


@pytest.mark.parametrize("autopipeline", ["true", "false"])
def test_b20_pooled_connections_a_network_forgot_fail_one_call_and_the_others_are_replaced(
    open_face: OpenStore,
    forgetting: tuple[str, ForgettingRelay],
    table: str,
    autopipeline: str,
) -> None:
    """A network forgets every connection of the store silently (a NAT or firewall state
    expired): the first call that sends on one fails, and the store replaces its other idle
    connections then, so no other call fails (not one per pooled connection)."""
    url, relay = forgetting
    query = f"table={table}&pool_min={POOLED}&pool_max={POOLED}&autopipeline={autopipeline}"
    store = open_face(with_query(url, query))
    filled(store)
    assert relay.forget() >= POOLED
    assert failures_of_calls(store, 2 * POOLED) == 1
