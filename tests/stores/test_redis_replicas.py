"""Replica-safe writes (`min_replicas`, `replica_timeout_ms`) and the Redis Cluster store's URL,
against a real Redis server (no replicas) and a real Redis Cluster (one replica per master)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from retrysafe import (
    Claim,
    ConfigurationError,
    Identity,
    ManualClock,
    ReplicaShortfallError,
    State,
    Store,
    StoreUnavailableError,
    open_async_store,
    open_store,
)
from retrysafe.stores._async.redis_cluster import cluster_seeds
from retrysafe.stores.redis import AsyncRedisClusterStore, RedisClusterStore, RedisStore
from tests.conftest import fresh_store_url
from tests.stores.conftest import BlockingFacade, concrete

pytestmark = pytest.mark.redis  # the stores are opened from URLs inside the tests

LEASE = 30.0
RETENTION = 3600.0
FACES = pytest.mark.parametrize("face", ["sync", "async"])


def ident(key: str = "key-1") -> Identity:
    """An identity in the test namespace."""
    return Identity("test", "tenant-a", key)


@pytest.fixture
def store_on(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str, str, str], Store]]:
    """Open stores of a backend and face, with extra URL options, on one fresh key space per
    backend; close them and drop what they wrote afterwards."""
    with contextlib.ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        urls: dict[str, str] = {}

        def open_(backend: str, face: str, options: str) -> Store:
            if backend not in urls:
                urls[backend] = stack.enter_context(fresh_store_url(backend, request, tmp_path))
            url = f"{urls[backend]}&{options}"
            if face == "sync":
                store = open_store(url, clock=ManualClock())
            else:
                store = BlockingFacade(portal.call(_open_async, url), portal)  # type: ignore[assignment]
            stack.callback(store.close)
            return store

        yield open_


async def _open_async(url: str) -> Any:
    return open_async_store(url, clock=ManualClock())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("min_replicas=-1", "min_replicas must be 0 or more"),
        ("min_replicas=1&replica_timeout_ms=0", "more than 0 milliseconds"),
        ("min_replicas=one", "not a valid int"),
    ],
)
def test_b20_replica_options_are_checked(options: str, message: str) -> None:
    """A bad `min_replicas` or `replica_timeout_ms` is refused when the store is built."""
    with pytest.raises(ConfigurationError, match=message):
        RedisStore.from_url(f"redis://127.0.0.1:6379/0?{options}")
    with pytest.raises(ConfigurationError, match=message):
        RedisClusterStore.from_url(f"redis+cluster://127.0.0.1:7000/?{options}")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:7000/", "redis\\+cluster:// or rediss\\+cluster://"),
        ("redis+cluster://127.0.0.1:7000/3", "only database 0"),
        ("redis+cluster://127.0.0.1:7000,:7001/", "Invalid Redis Cluster seed"),
        ("redis+cluster://127.0.0.1:notaport/", "Invalid Redis Cluster seed"),
        ("redis+cluster://127.0.0.1:7000/?autopipeline=1", "Unknown store URL option"),
    ],
)
def test_b20_cluster_urls_are_checked(url: str, message: str) -> None:
    """A cluster URL names seeds and nothing a cluster cannot have."""
    with pytest.raises(ConfigurationError, match=message):
        RedisClusterStore.from_url(url)


def test_cluster_url_seeds_credentials_and_tls() -> None:
    """Every seed is kept; `rediss+cluster://` connects with TLS; credentials are unquoted."""
    url = "rediss+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002/?prefix=app"
    assert cluster_seeds(url) == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    store = AsyncRedisClusterStore.from_url(url)  # the async client connects lazily
    seed = store._redis.nodes_manager.startup_nodes["10.0.0.1:7000"]
    assert (seed.connection_kwargs["username"], seed.connection_kwargs["password"]) == (
        "app",
        "p@ss",
    )
    assert seed.connection_class.__name__ == "SSLConnection"


@FACES
def test_b20_a_claim_no_replica_confirms_fails_closed_and_is_not_kept(
    face: str, store_on: Callable[[str, str, str], Store]
) -> None:
    """On a Redis with no replica, `min_replicas=1` makes a claim fail with
    StoreUnavailableError within the timeout; the claim it wrote is released, so a retry with
    the option off claims the key at once."""
    store = store_on("redis", face, "min_replicas=1&replica_timeout_ms=50")
    with pytest.raises(StoreUnavailableError, match="0 of the 1 replicas") as raised:
        store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert isinstance(raised.value, ReplicaShortfallError)
    assert store.get(ident()) is None
    plain = store_on("redis", face, "min_replicas=0")
    assert plain.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired


@FACES
def test_b20_a_claim_no_replica_confirms_whose_record_is_gone_still_fails_closed(
    face: str, store_on: Callable[[str, str, str], Store]
) -> None:
    """The release of an unconfirmed claim is best effort: when the record is no longer the
    claim's (a failover lost the write, another claimant took the key), the claim still raises
    the shortfall, StoreUnavailableError (a 503 for a request), not the release's FencedError
    (which escaped as a 500)."""
    store = store_on("redis", face, "min_replicas=1&replica_timeout_ms=50")
    plain = store_on("redis", "sync", "min_replicas=0")  # the same keys, outside the event loop
    target = concrete(store)
    release = target.release
    theirs: list[Claim] = []

    def taken(identity: Identity) -> None:
        """Before the release: the unconfirmed write lost, another claimant holds the key, and
        a replica is back, so the release's own write is confirmed (as after a failover)."""
        plain.delete(identity)
        theirs.append(plain.claim(identity, "fp", lease=LEASE, retention=RETENTION))
        target._commands._wait = None

    if inspect.iscoroutinefunction(release):

        async def lost_then_release(identity: Identity, token: str) -> None:
            taken(identity)
            await release(identity, token)

        target.release = lost_then_release
    else:

        def lost_then_release_sync(identity: Identity, token: str) -> None:
            taken(identity)
            release(identity, token)

        target.release = lost_then_release_sync
    with pytest.raises(ReplicaShortfallError, match="0 of the 1 replicas"):
        store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    record = store.get(ident())
    assert record is not None
    assert (record.token, record.state) == (theirs[0].token, State.IN_FLIGHT)  # left theirs


@FACES
def test_b20_a_completion_no_replica_confirms_fails_closed(
    face: str, store_on: Callable[[str, str, str], Store]
) -> None:
    """A completion too few replicas confirmed raises StoreUnavailableError: the caller cannot
    know whether a failover would keep it, so it must not report it stored."""
    plain = store_on("redis", face, "min_replicas=0")
    claim = plain.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    waiting = store_on("redis", face, "min_replicas=1&replica_timeout_ms=50")
    with pytest.raises(StoreUnavailableError, match="replicas"):
        waiting.complete(ident(), claim.token, b"outcome", retention=RETENTION)


@pytest.mark.parametrize("face", ["sync", "async"])
def test_b7_b17_one_replica_per_master_confirms_every_write_on_the_cluster(
    face: str, store_on: Callable[[str, str, str], Store]
) -> None:
    """On the cluster (one replica per master), `min_replicas=1` claims, checkpoints, renews,
    completes and replays keys spread over every master; `min_replicas=2` fails closed."""
    store = store_on("redis-cluster", face, "min_replicas=1&replica_timeout_ms=2000")
    keys = [f"key-{n}" for n in range(12)]
    for key in keys:
        claim = store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)
        assert claim.acquired
        store.checkpoint(ident(key), claim.token, "phase-1")
        store.renew(ident(key), claim.token, lease=LEASE)
        store.complete(ident(key), claim.token, key.encode(), retention=RETENTION)
    for key in keys:
        replay = store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)
        assert (replay.acquired, replay.record.state, replay.record.outcome) == (
            False,
            State.DONE,
            key.encode(),
        )
    too_many = store_on("redis-cluster", face, "min_replicas=2&replica_timeout_ms=50")
    with pytest.raises(StoreUnavailableError, match="1 of the 2 replicas"):
        too_many.claim(ident("more"), "fp", lease=LEASE, retention=RETENTION)
    assert store.get(ident("more")) is None


def test_tls_files_reach_the_clients_and_need_a_tls_url() -> None:
    """`ssl_ca_certs`, `ssl_certfile` and `ssl_keyfile` go to redis-py's arguments of the same
    names (the store's client and its delete listener's URL); on a URL without TLS they are
    refused rather than ignored."""
    files = "ssl_ca_certs=/etc/ca.pem&ssl_certfile=/etc/client.pem&ssl_keyfile=/etc/client.key"
    store = RedisStore.from_url(f"rediss://127.0.0.1:6380/0?{files}")
    kwargs = store._redis.connection_pool.connection_kwargs
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == (
        "/etc/ca.pem",
        "/etc/client.pem",
        "/etc/client.key",
    )
    deletes = store.delete_announcements()
    assert deletes is not None
    assert deletes._url.endswith("?" + files.replace("/", "%2F"))
    cluster = AsyncRedisClusterStore.from_url(f"rediss+cluster://127.0.0.1:7000/?{files}")
    seed = cluster._redis.nodes_manager.startup_nodes["127.0.0.1:7000"]
    assert seed.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    for url in ("redis://127.0.0.1:6380/0", "redis+cluster://127.0.0.1:7000/"):
        with pytest.raises(ConfigurationError, match="need a TLS URL"):
            open_store(f"{url}?ssl_ca_certs=/etc/ca.pem")
