"""`min_replicas` on a Redis Cluster while the record's slot is being moved (B19, B20): the
write is confirmed by `WAIT` only after a marker written in the record's slot, and a slot on
the move redirects that marker (ASK). The write is then not confirmed: the call fails as
unavailable (docs/stores.md), where it was reported done against an older replication offset.
A private 3-master, 3-replica cluster; the slot is set migrating as `redis-cli --cluster
reshard` begins a move."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrysafe import Identity, State, StoreUnavailableError, open_store
from tests.cluster_harness import private_cluster, slot_of

pytestmark = pytest.mark.redis

IDENTITY = Identity("orders", "tenant", "k-1")


def test_b19_b20_a_completion_while_its_slot_migrates_is_not_confirmed(tmp_path: Path) -> None:
    """The completion sent while the slot migrates is not confirmed: it fails as unavailable
    (before: reported done, its replicas never asked about it)."""
    with private_cluster(tmp_path) as cluster:
        store = open_store(f"{cluster.url}?min_replicas=1&replica_timeout_ms=500")
        try:
            claim = store.claim(IDENTITY, "fp", lease=30, retention=600)
            assert claim.acquired
            slot = slot_of(IDENTITY)
            (source,) = [m for m in cluster.masters if slot in cluster.slots_served(m)]
            target = next(m for m in cluster.masters if m is not source)
            cluster.command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
            cluster.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
            with pytest.raises(StoreUnavailableError, match="slot is being moved"):
                store.complete(IDENTITY, claim.record.token, b"paid", retention=600)
            for node in (source, target):
                cluster.command(node, "CLUSTER", "SETSLOT", slot, "STABLE")
            # The master applied it: the flow, which held the outcome, finds it done under its
            # own token when it stores it again (B19), once replicas can confirm it.
            record = store.get(IDENTITY)
            assert record is not None
            assert (record.state, record.token) == (State.DONE, claim.record.token)
        finally:
            store.close()
