"""The sync Redis store's kept connections: shared by threads, checked after idling, never out
of step with their replies, and not shared with a forked child (against a real Redis server)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from retrysafe import Identity, StoreUnavailableError
from retrysafe.stores import _redis_executors
from retrysafe.stores._redis_executors import KeptConnections
from retrysafe.stores.redis import RedisStore
from tests.conftest import delete_redis_prefix, unique_name

pytestmark = pytest.mark.redis

LEASE = 30.0
RETENTION = 3600.0


def ident(key: str) -> Identity:
    """An identity in the test namespace."""
    return Identity("test", "tenant-a", key)


@pytest.fixture
def url(redis_url: str) -> Iterator[str]:
    """A store URL with a prefix of its own, deleted afterwards."""
    prefix = unique_name()
    yield f"{redis_url}?prefix={prefix}&socket_timeout=5"
    delete_redis_prefix(redis_url, prefix)


@pytest.fixture
def store(url: str) -> Iterator[RedisStore]:
    """A sync Redis store."""
    opened = RedisStore.from_url(url)
    yield opened
    opened.close()


def kept(store: RedisStore) -> KeptConnections:
    """The store's executor (white box: which connections its calls use)."""
    commands = store._commands
    assert isinstance(commands, KeptConnections)
    return commands


def connection_id(store: RedisStore) -> int:
    """The server's id of the connection the store's next command will use."""
    client_id: int = kept(store)._execute((b"CLIENT", b"ID"))
    return client_id


def test_b7_threads_sharing_a_store_each_read_their_own_replies(store: RedisStore) -> None:
    """Sixteen threads claiming, completing and reading their own keys on one store each get
    their own records back, on at most one kept connection per thread."""
    threads = 16
    barrier = threading.Barrier(threads)

    def run(worker: int) -> list[str]:
        barrier.wait(timeout=30)
        wrong = []
        for step in range(40):
            identity = ident(f"w{worker}-{step}")
            claim = store.claim(identity, f"fp-{worker}", lease=LEASE, retention=RETENTION)
            outcome = f"{worker}:{step}".encode()
            done = store.complete(identity, claim.token, outcome, retention=RETENTION)
            record = store.get(identity)
            if not claim.acquired or done.identity != identity or record is None:
                wrong.append(f"{worker}-{step}: {claim} {done} {record}")
            elif record.outcome != outcome or record.fingerprint != f"fp-{worker}":
                wrong.append(f"{worker}-{step}: read {record}")
        return wrong

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(run, range(threads)))
    assert [problem for result in results for problem in result] == []
    assert 1 <= len(kept(store)._idle) <= threads


def test_a_connection_idle_long_enough_is_checked_and_replaced(
    store: RedisStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept connection that the server closed while it idled is replaced before use: the
    next call succeeds, on a new connection."""
    monkeypatch.setattr(_redis_executors, "_CHECK_AFTER", 0.0)  # every connection is checked
    killed = connection_id(store)
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.client_kill_filter(_id=str(killed)) == 1
    assert store.claim(ident("after-kill"), "fp", lease=LEASE, retention=RETENTION).acquired
    assert connection_id(store) != killed


def test_a_connection_closed_in_steady_use_fails_one_call_only(
    store: RedisStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection in steady use is not checked: closed by the server, it fails the one call
    that finds it closed (StoreUnavailableError), and is never used again."""
    monkeypatch.setattr(_redis_executors, "_CHECK_AFTER", 3600.0)  # never checked
    killed = connection_id(store)
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.client_kill_filter(_id=str(killed)) == 1
    with pytest.raises(StoreUnavailableError):
        store.claim(ident("on-closed"), "fp", lease=LEASE, retention=RETENTION)
    assert store.claim(ident("next"), "fp", lease=LEASE, retention=RETENTION).acquired
    assert connection_id(store) != killed


def test_a_reply_that_timed_out_is_never_read_by_the_next_command(redis_url: str) -> None:
    """A command whose reply does not come within the socket timeout leaves its connection
    disconnected: the reply that comes late is never taken for the next command's."""
    prefix = unique_name()
    store = RedisStore.from_url(f"{redis_url}?prefix={prefix}&socket_timeout=0.2")
    try:
        executor = kept(store)
        # BLPOP on an empty list blocks this connection only (not the server) for 1 s.
        with pytest.raises(redis.TimeoutError):
            executor._execute((b"BLPOP", f"{prefix}:empty".encode(), 1))
        assert executor._idle == []  # the connection went back to the pool, disconnected
        assert executor._execute((b"ECHO", b"mine")) == b"mine"
        claim = store.claim(ident("after-timeout"), "fp", lease=LEASE, retention=RETENTION)
        assert claim.acquired
    finally:
        store.close()
        delete_redis_prefix(redis_url, prefix)


def test_close_gives_the_kept_connections_back_to_the_pool(url: str) -> None:
    """`close` empties the store's idle connections into the client's pool."""
    store = RedisStore.from_url(url)
    store.claim(ident("one"), "fp", lease=LEASE, retention=RETENTION)
    executor = kept(store)
    assert len(executor._idle) == 1
    store._commands.close()
    assert executor._idle == []
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_never_uses_the_parents_connections(store: RedisStore) -> None:
    """A child forked after the store was used opens its own connection; the parent's keeps
    answering the parent."""
    claim = store.claim(ident("parent"), "fp", lease=LEASE, retention=RETENTION)
    parent_connection = connection_id(store)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        verdict = b"error"
        try:
            own = connection_id(store) != parent_connection
            record = store.get(ident("parent"))
            child = store.claim(ident("child"), "fp", lease=LEASE, retention=RETENTION)
            seen = record is not None and record.token == claim.token
            verdict = b"ok" if own and seen and child.acquired else b"wrong"
        finally:
            os.write(write, verdict)
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        verdict = pipe.read()
    os.waitpid(pid, 0)
    assert verdict == b"ok"
    assert connection_id(store) == parent_connection
    record = store.get(ident("child"))
    assert record is not None
    assert record.state == "in_flight"
