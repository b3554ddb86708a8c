"""`rediss+cluster://` against a real Redis Cluster whose nodes serve clients over TLS only.

The module starts a private cluster (3 masters, 3 replicas; scripts/redis_cluster_tls.py) with a
throwaway certificate authority. The store trusts it either through the URL
(`?ssl_ca_certs=PATH`) or, with no option, as Python's default TLS context does, which honours
OpenSSL's `SSL_CERT_FILE`: most tests take that second way, one the first.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from redis.crc import key_slot

from retrysafe import (
    Identity,
    ManualClock,
    State,
    Store,
    StoreUnavailableError,
    open_async_store,
    open_store,
)
from tests.conftest import service_missing, unique_name
from tests.stores.conftest import BlockingFacade

# services.py imports its sibling as `redis_cluster`, so the folder itself goes on the path
# (last: nothing there may shadow an installed module).
_SCRIPTS = str(Path(__file__).resolve().parents[2] / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.append(_SCRIPTS)

import redis_cluster  # noqa: E402  (scripts/redis_cluster.py, found through the path above)
import redis_cluster_tls  # noqa: E402  (scripts/redis_cluster_tls.py)

pytestmark = [pytest.mark.redis, pytest.mark.services]

LEASE = 30.0
RETENTION = 3600.0
PER_MASTER = 3
TIMEOUTS = "connect_timeout=5&socket_timeout=5"


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_cluster_tls.TlsCluster]:
    """A private cluster of 3 masters and 3 replicas serving TLS only; stopped afterwards."""
    for binary in ("redis-server", "openssl"):
        if shutil.which(binary) is None:
            service_missing(
                "Redis Cluster over TLS",
                f"no local `{binary}`: the TLS Redis Cluster for rediss+cluster:// cannot start",
            )
    with redis_cluster_tls.tls_cluster(tmp_path_factory.mktemp("tls-cluster")) as cluster:
        yield cluster


@pytest.fixture
def trust_test_ca(
    tls_cluster: redis_cluster_tls.TlsCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make Python's default TLS context, which the store uses, trust the throwaway authority."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cluster.certificates.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture
def open_face(face: str, clock: ManualClock) -> Iterator[Callable[[str], Store]]:
    """Open stores of the test's face from URLs, on the test's clock; close them afterwards."""
    with contextlib.ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal()) if face == "async" else None

        def open_(url: str) -> Store:
            if portal is None:
                store = open_store(url, clock=clock)
            else:
                store = BlockingFacade(portal.call(_open_async, url, clock), portal)  # type: ignore[assignment]
            stack.callback(store.close)
            return store

        yield open_


async def _open_async(url: str, clock: ManualClock) -> Any:
    return open_async_store(url, clock=clock)


def tls_commands(cluster: redis_cluster_tls.TlsCluster) -> contextlib.AbstractContextManager[None]:
    """Send scripts/redis_cluster.py's commands to the cluster's nodes over TLS."""
    return redis_cluster.over_tls(redis_cluster_tls.client_context(cluster.certificates.ca))


def master_of(slot: int, cluster: redis_cluster_tls.TlsCluster) -> int:
    """The port of the master serving `slot` (the cluster is as it was formed: no failover)."""
    masters = len(cluster.masters)
    (index,) = (i for i in range(masters) if slot in redis_cluster.slot_range(i, masters))
    return cluster.masters[index]


def slot_of(identity: Identity) -> int:
    """The slot of `identity`'s record in a Redis store: its keys' hash tag is the digest (B34)."""
    return key_slot(f"{{{identity.digest()}}}".encode())


def identities_on_every_master(cluster: redis_cluster_tls.TlsCluster) -> list[Identity]:
    """`PER_MASTER` identities for each master, in a namespace of their own."""
    namespace = unique_name("tls")
    chosen: dict[int, list[Identity]] = {port: [] for port in cluster.masters}
    for number in range(1000):
        identity = Identity(namespace, "tenant-a", f"key-{number}")
        owner = chosen[master_of(slot_of(identity), cluster)]
        if len(owner) < PER_MASTER:
            owner.append(identity)
    assert all(len(found) == PER_MASTER for found in chosen.values()), chosen
    return [identity for found in chosen.values() for identity in found]


def keys_on(port: int, prefix: str) -> list[str]:
    """SCAN one node (over TLS, inside `tls_commands`) for the keys under `prefix`."""
    cursor, found = "0", []
    while True:
        reply = redis_cluster.command(port, "SCAN", cursor, "MATCH", f"{prefix}*", "COUNT", 1000)
        assert isinstance(reply, list)
        cursor, keys = reply
        assert isinstance(cursor, str)
        assert isinstance(keys, list)
        found += [str(key) for key in keys]
        if cursor == "0":
            return found


def test_every_node_announces_its_tls_port_in_cluster_slots_and_redirections(
    tls_cluster: redis_cluster_tls.TlsCluster,
) -> None:
    """CLUSTER SLOTS, from every node, and a MOVED redirection name only the nodes' TLS ports."""
    tls_ports = {*tls_cluster.masters, *tls_cluster.replicas}
    with tls_commands(tls_cluster):
        for port in tls_ports:
            ranges = redis_cluster.command(port, "CLUSTER", "SLOTS")
            assert isinstance(ranges, list)
            named = {node[1] for entry in ranges if isinstance(entry, list) for node in entry[2:]}
            # Redis 7 lists a replica only once it has replicated some data: masters at least.
            assert set(tls_cluster.masters) <= named <= tls_ports, port
        slot = key_slot(b"moved")
        owner = master_of(slot, tls_cluster)
        other = next(port for port in tls_cluster.masters if port != owner)
        with pytest.raises(redis_cluster.ClusterError, match=f"MOVED {slot} 127.0.0.1:{owner}$"):
            redis_cluster.command(other, "GET", "moved")


@pytest.mark.usefixtures("trust_test_ca")
def test_claim_complete_and_replay_on_every_master_over_tls(
    tls_cluster: redis_cluster_tls.TlsCluster, open_face: Callable[[str], Store]
) -> None:
    """Records on all three masters are claimed, completed and replayed through rediss+cluster://."""
    prefix = unique_name()
    store = open_face(f"{tls_cluster.url}?prefix={prefix}&{TIMEOUTS}")
    identities = identities_on_every_master(tls_cluster)
    for identity in identities:
        claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
        assert claim.acquired, identity
        store.complete(
            identity, claim.token, f"outcome of {identity.key}".encode(), retention=RETENTION
        )
    for identity in identities:
        replay = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
        assert not replay.acquired, identity
        assert replay.record.state is State.DONE, identity
        assert replay.record.outcome == f"outcome of {identity.key}".encode(), identity
    with tls_commands(tls_cluster):
        holding = {port: keys_on(port, prefix) for port in tls_cluster.masters}
    assert all(holding.values()), holding


@pytest.mark.usefixtures("trust_test_ca")
def test_keys_list_and_stats_count_every_master_over_tls(
    tls_cluster: redis_cluster_tls.TlsCluster, open_face: Callable[[str], Store]
) -> None:
    """`list_records` and `stats` gather the records of all three masters, done and in flight."""
    store = open_face(f"{tls_cluster.url}?prefix={unique_name()}&{TIMEOUTS}")
    identities = identities_on_every_master(tls_cluster)
    in_flight = identities[::PER_MASTER]  # one on each master
    for identity in identities:
        claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
        if identity not in in_flight:
            store.complete(identity, claim.token, b"done", retention=RETENTION)
    listed = store.list_records(namespace=identities[0].namespace, limit=1000)
    assert {record.identity for record in listed} == set(identities)
    running = store.list_records(namespace=identities[0].namespace, state=State.IN_FLIGHT)
    assert {record.identity for record in running} == set(in_flight)
    stats = store.stats()
    assert (stats.in_flight, stats.done) == (len(in_flight), len(identities) - len(in_flight))
    assert stats.bytes_stored == len(b"done") * stats.done


@pytest.mark.usefixtures("trust_test_ca")
def test_a_replica_as_the_only_seed_finds_the_masters_tls_ports(
    tls_cluster: redis_cluster_tls.TlsCluster, open_face: Callable[[str], Store]
) -> None:
    """Seeded with one replica, the store learns the masters' TLS ports and claims on each."""
    url = f"rediss+cluster://127.0.0.1:{tls_cluster.replicas[0]}/?prefix={unique_name()}"
    store = open_face(f"{url}&{TIMEOUTS}")
    for identity in identities_on_every_master(tls_cluster):
        assert store.claim(identity, "fp", lease=LEASE, retention=RETENTION).acquired


@pytest.mark.timeout(60)
def test_plain_text_to_the_tls_ports_is_store_unavailable(
    tls_cluster: redis_cluster_tls.TlsCluster, open_face: Callable[[str], Store]
) -> None:
    """redis+cluster:// (no TLS) to the TLS ports fails as StoreUnavailableError, not a hang."""
    url = tls_cluster.url.replace("rediss+cluster://", "redis+cluster://", 1)
    identity = Identity(unique_name("tls"), "tenant-a", "key-1")
    with pytest.raises(StoreUnavailableError):
        # The sync face connects when opened, the async one at its first command.
        open_face(f"{url}?prefix={unique_name()}&{TIMEOUTS}").claim(
            identity, "fp", lease=LEASE, retention=RETENTION
        )


@pytest.mark.timeout(60)
def test_a_certificate_from_an_untrusted_authority_is_store_unavailable(
    tls_cluster: redis_cluster_tls.TlsCluster,
    open_face: Callable[[str], Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unless the throwaway authority is trusted, rediss+cluster:// refuses the certificates."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    identity = Identity(unique_name("tls"), "tenant-a", "key-1")
    with pytest.raises(StoreUnavailableError, match=r"CERTIFICATE_VERIFY_FAILED"):
        open_face(f"{tls_cluster.url}?prefix={unique_name()}&{TIMEOUTS}").claim(
            identity, "fp", lease=LEASE, retention=RETENTION
        )


def test_the_authority_named_in_the_url_is_trusted(
    tls_cluster: redis_cluster_tls.TlsCluster,
    open_face: Callable[[str], Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`?ssl_ca_certs=PATH` trusts a private authority without touching the environment."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    ca = tls_cluster.certificates.ca
    store = open_face(f"{tls_cluster.url}?prefix={unique_name()}&{TIMEOUTS}&ssl_ca_certs={ca}")
    identity = Identity(unique_name("tls"), "tenant-a", "key-1")
    claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
    store.complete(identity, claim.token, b"kept", retention=RETENTION)
    replay = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
    assert (claim.acquired, replay.acquired, replay.record.outcome) == (True, False, b"kept")
