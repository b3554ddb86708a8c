"""The Redis Cluster stores need redis-py 8.2 or later: with an earlier one they refuse
to start, in one clear line, instead of failing a call half way.

After a lost connection the cluster exchanges ask redis-py's cluster client for a refresh of
its map of the slots (`stores/_redis_pinned.py`), which redis-py has since 8.2. An earlier
redis-py is stood in for by removing those methods from the installed one's classes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, NodesManager, RedisCluster

from retrysafe import ConfigurationError, Identity, open_async_store, open_store
from retrysafe.stores.redis import AsyncRedisClusterStore, RedisClusterStore
from tests.conftest import cluster_seeds, unique_name
from tests.servers import refused_port

NEEDS = "The Redis Cluster store needs redis-py 8.2 or later (this is redis-py "


@pytest.fixture
def before_8_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed redis-py without the refresh requests that 8.2 added."""
    monkeypatch.delattr(NodesManager, "_request_refresh")
    monkeypatch.delattr(NodesManager, "_run_requested_refresh")
    monkeypatch.delattr(AsyncRedisCluster, "_request_refresh")


@pytest.mark.usefixtures("before_8_2")
@pytest.mark.parametrize("face", ["sync", "async"])
def test_an_earlier_redis_py_is_refused_before_anything_connects(face: str) -> None:
    """`open_store` / `open_async_store` on `redis+cluster://` raise `ConfigurationError`
    naming the version needed and the one installed; no client connects first (the seed's
    port refuses connections: a client that tried would make it `StoreUnavailableError`)."""
    url = f"redis+cluster://127.0.0.1:{refused_port()}/?connect_timeout=1"
    opener = open_store if face == "sync" else open_async_store
    with pytest.raises(ConfigurationError) as raised:
        opener(url)
    assert str(raised.value).startswith(NEEDS)
    assert str(raised.value).endswith("pip install 'redis>=8.2'")


@pytest.fixture
def cluster_client(redis_cluster_url: str) -> Iterator[RedisCluster]:
    """A sync cluster client of the test cluster."""
    nodes = [ClusterNode(host, port) for host, port in cluster_seeds(redis_cluster_url)]
    client = RedisCluster(startup_nodes=nodes)
    yield client
    client.close()


@pytest.mark.usefixtures("before_8_2")
def test_a_store_built_on_a_client_refuses_an_earlier_redis_py_too(
    cluster_client: RedisCluster,
) -> None:
    """`RedisClusterStore(client)` and `AsyncRedisClusterStore(client)`, built on a client the
    caller made, refuse it as well."""
    with pytest.raises(ConfigurationError, match=r"needs redis-py 8\.2 or later"):
        RedisClusterStore(cluster_client)  # type: ignore[arg-type]
    async_client = AsyncRedisCluster(
        startup_nodes=[
            ClusterNode(node.host, node.port)  # type: ignore[arg-type]
            for node in cluster_client.get_primaries()
        ]
    )
    with pytest.raises(ConfigurationError, match=r"needs redis-py 8\.2 or later"):
        AsyncRedisClusterStore(async_client)  # type: ignore[arg-type]


def test_the_installed_redis_py_is_accepted(cluster_client: RedisCluster) -> None:
    """With the redis-py this project locks, the same store starts and serves."""
    store = RedisClusterStore(cluster_client, prefix=unique_name())  # type: ignore[arg-type]
    identity = Identity("versions", "", "k-1")
    claim = store.claim(identity, "fp", lease=30, retention=60)
    assert claim.acquired
    store.complete(identity, claim.record.token, b"done", retention=60)
    found = store.get(identity)
    assert found is not None
    assert found.outcome == b"done"
    assert store.delete(identity)
