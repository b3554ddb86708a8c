"""The Redis Cluster scripts/services.py starts is what it claims: 3 masters, each with a connected
replica, every slot served, and a cluster client's writes to many slots read back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.conftest import ClusterNodeInfo, cluster_seeds, unique_name

pytestmark = pytest.mark.redis

SLOTS = 16384


def node_client(port: int) -> redis.Redis:
    """A plain client of one node, replies decoded."""
    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)


def info_fields(text: str) -> dict[str, str]:
    """The `name:value` lines of a CLUSTER INFO reply."""
    lines = (line.partition(":") for line in text.splitlines())
    return {name: value for name, colon, value in lines if colon}


@pytest.fixture
def cluster(redis_cluster_url: str) -> Iterator[RedisCluster]:
    """A redis-py cluster client seeded from the URL's nodes."""
    seeds = [ClusterNode(host, port) for host, port in cluster_seeds(redis_cluster_url)]
    client = RedisCluster(startup_nodes=seeds, decode_responses=True, socket_timeout=5)
    yield client
    client.close()


def test_every_node_reports_the_cluster_ok_with_every_slot_served(
    redis_cluster_nodes: list[ClusterNodeInfo],
) -> None:
    """Each of the six nodes says the cluster is ok, knows six nodes and sees all slots served."""
    assert len(redis_cluster_nodes) == 6
    for node in redis_cluster_nodes:
        with node_client(node["port"]) as client:
            info = info_fields(client.execute_command("CLUSTER", "INFO"))
        assert info["cluster_state"] == "ok", node
        assert info["cluster_known_nodes"] == "6", node
        assert info["cluster_size"] == "3", node
        assert info["cluster_slots_assigned"] == str(SLOTS), node
        assert info["cluster_slots_ok"] == str(SLOTS), node


def test_three_masters_each_have_one_connected_replica(
    redis_cluster_nodes: list[ClusterNodeInfo],
) -> None:
    """The masters are the nodes listed as masters, and each replica follows a distinct master."""
    masters = {node["port"] for node in redis_cluster_nodes if node["role"] == "master"}
    replicas = {node["port"] for node in redis_cluster_nodes if node["role"] == "replica"}
    assert len(masters) == 3
    assert len(replicas) == 3
    for port in masters:
        with node_client(port) as client:
            replication = client.info("replication")
        assert replication["role"] == "master", port
        assert replication["connected_slaves"] == 1, port
        assert replication["slave0"]["state"] == "online", port
    followed = set()
    for port in replicas:
        with node_client(port) as client:
            replication = client.info("replication")
        assert replication["role"] == "slave", port
        assert replication["master_link_status"] == "up", port
        followed.add(replication["master_port"])
    assert followed == masters


def test_the_url_seeds_are_the_masters_and_their_slots_cover_the_keyspace(
    redis_cluster_url: str, redis_cluster_nodes: list[ClusterNodeInfo]
) -> None:
    """The URL names the three masters, and their slot ranges together cover 0..16383 once."""
    masters = {node["port"] for node in redis_cluster_nodes if node["role"] == "master"}
    assert {port for _host, port in cluster_seeds(redis_cluster_url)} == masters
    with node_client(redis_cluster_nodes[0]["port"]) as client:
        ranges = client.execute_command("CLUSTER", "SLOTS")
    served = sorted((int(first), int(last), int(owner[1])) for first, last, owner, *_ in ranges)
    assert {port for _first, _last, port in served} == masters
    covered = [slot for first, last, _port in served for slot in range(first, last + 1)]
    assert covered == list(range(SLOTS))


def test_a_cluster_client_writes_keys_on_every_master_and_reads_them_back(
    cluster: RedisCluster,
) -> None:
    """Keys spread over many slots, on all three masters, read back what was written."""
    prefix = unique_name()
    keys = [f"{prefix}:{index}" for index in range(60)]
    try:
        for key in keys:
            cluster.set(key, f"value of {key}")
        assert [cluster.get(key) for key in keys] == [f"value of {key}" for key in keys]
        slots = {cluster.keyslot(key) for key in keys}
        owners = {cluster.get_node_from_key(key).port for key in keys}
    finally:
        for key in keys:
            cluster.delete(key)
    assert len(slots) > 30
    assert len(owners) == 3
