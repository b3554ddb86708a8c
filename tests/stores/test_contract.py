"""The store contract, proven once for every backend and both faces (memory, SQLite,
PostgreSQL, Redis; sync and async)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from retrysafe import FencedError, Identity, ManualClock, State, Store, StoreClosedError

LEASE = 30.0
RETENTION = 3600.0


def ident(key: str = "key-1", scope: str = "tenant-a", namespace: str = "test") -> Identity:
    """An identity in the test namespace."""
    return Identity(namespace, scope, key)


def test_b7_claim_absent_key_acquires(store: Store) -> None:
    """Claiming an absent key acquires it with a token and an in-flight record."""
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert claim.acquired
    assert not claim.taken_over
    assert claim.record.state is State.IN_FLIGHT
    assert claim.record.fingerprint == "fp"
    assert claim.token
    now = store.clock.now()
    assert claim.record.lease_expires_at == pytest.approx(now + LEASE)
    assert store.get(ident()) == claim.record


def test_b7_second_claim_returns_existing_record(store: Store) -> None:
    """A second claim of a live key does not acquire it and returns the holder's record."""
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    second = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert not second.acquired
    assert second.record.token == first.token
    assert second.record.state is State.IN_FLIGHT


def test_b10_complete_stores_outcome_for_replay(store: Store, clock: ManualClock) -> None:
    """A completed record holds its outcome byte for byte and is returned to later claims."""
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    outcome = bytes(range(256)) * 4
    done = store.complete(ident(), claim.token, outcome, retention=RETENTION)
    assert done.state is State.DONE
    assert done.outcome == outcome
    clock.advance(LEASE * 10)  # long after the lease: a done record is never taken over
    again = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert not again.acquired
    assert again.record.state is State.DONE
    assert again.record.outcome == outcome


def test_b13_mismatched_claim_leaves_record_untouched(store: Store) -> None:
    """A claim with another fingerprint gets the existing record and changes nothing."""
    claim = store.claim(ident(), "fp-1", lease=LEASE, retention=RETENTION)
    store.complete(ident(), claim.token, b"one", retention=RETENTION)
    other = store.claim(ident(), "fp-2", lease=LEASE, retention=RETENTION)
    assert not other.acquired
    assert other.record.fingerprint == "fp-1"
    assert store.get(ident()) == other.record


def test_b8_scopes_and_namespaces_are_separate(store: Store) -> None:
    """The same key in two scopes, or two namespaces, is two independent records."""
    claims = [
        store.claim(ident(scope="a"), "fp", lease=LEASE, retention=RETENTION),
        store.claim(ident(scope="b"), "fp", lease=LEASE, retention=RETENTION),
        store.claim(ident(namespace="other"), "fp", lease=LEASE, retention=RETENTION),
    ]
    assert all(c.acquired for c in claims)
    store.complete(ident(scope="a"), claims[0].token, b"for a", retention=RETENTION)
    record_b = store.get(ident(scope="b"))
    assert record_b is not None
    assert record_b.state is State.IN_FLIGHT
    assert record_b.outcome is None


def test_b16_takeover_only_after_lease_expires(store: Store, clock: ManualClock) -> None:
    """An in-flight claim is taken over, with a new token, only once its lease has expired."""
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(LEASE - 1)
    assert not store.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired
    clock.advance(1)
    second = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert second.acquired
    assert second.taken_over
    assert second.token != first.token


def test_b16_renewed_lease_is_not_taken_over(store: Store, clock: ManualClock) -> None:
    """A holder that renews its lease keeps the key past the original lease."""
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(LEASE - 5)
    renewed = store.renew(ident(), first.token, lease=LEASE)
    assert renewed.lease_expires_at == pytest.approx(store.clock.now() + LEASE)
    clock.advance(10)  # past the first lease, within the renewed one
    assert not store.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired
    store.complete(ident(), first.token, b"ok", retention=RETENTION)


def test_b13_expired_lease_is_not_taken_over_by_another_request(
    store: Store, clock: ManualClock
) -> None:
    """An expired lease is taken over only by the same request: another fingerprint mismatches."""
    store.claim(ident(), "fp-1", lease=LEASE, retention=RETENTION)
    clock.advance(LEASE + 1)
    other = store.claim(ident(), "fp-2", lease=LEASE, retention=RETENTION)
    assert not other.acquired
    assert other.record.fingerprint == "fp-1"


@pytest.mark.parametrize("operation", ["complete", "release", "renew", "checkpoint"])
def test_b17_stale_token_is_fenced(store: Store, clock: ManualClock, operation: str) -> None:
    """A holder whose lease was taken over cannot complete, release, renew or checkpoint."""
    stale = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(LEASE + 1)
    fresh = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert fresh.acquired
    actions: dict[str, Callable[[], object]] = {
        "complete": lambda: store.complete(ident(), stale.token, b"stale", retention=RETENTION),
        "release": lambda: store.release(ident(), stale.token),
        "renew": lambda: store.renew(ident(), stale.token, lease=LEASE),
        "checkpoint": lambda: store.checkpoint(ident(), stale.token, "phase-1"),
    }
    with pytest.raises(FencedError):
        actions[operation]()
    record = store.get(ident())
    assert record is not None
    assert record.token == fresh.token
    assert record.state is State.IN_FLIGHT
    assert record.outcome is None
    assert record.recovery_point is None


def test_b17_done_record_cannot_be_completed_again(store: Store) -> None:
    """Once done, even the holder's token cannot overwrite the outcome."""
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.complete(ident(), claim.token, b"first", retention=RETENTION)
    with pytest.raises(FencedError):
        store.complete(ident(), claim.token, b"second", retention=RETENTION)
    with pytest.raises(FencedError):
        store.release(ident(), claim.token)
    record = store.get(ident())
    assert record is not None
    assert record.outcome == b"first"


def test_b17_unknown_key_is_fenced(store: Store) -> None:
    """Completing a key that was never claimed is refused."""
    with pytest.raises(FencedError):
        store.complete(ident(), "no-such-token", b"x", retention=RETENTION)


def test_b18_release_lets_the_retry_run(store: Store) -> None:
    """Releasing a claim removes the record, so the next claim acquires it."""
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.release(ident(), claim.token)
    assert store.get(ident()) is None
    again = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert again.acquired
    assert not again.taken_over


def test_b30_checkpoint_keeps_recovery_point(store: Store, clock: ManualClock) -> None:
    """A recovery point survives a takeover, so the next holder resumes after it."""
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert store.checkpoint(ident(), claim.token, "charged").recovery_point == "charged"
    clock.advance(LEASE + 1)
    takeover = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert takeover.acquired
    assert takeover.record.recovery_point == "charged"


def test_b21_expired_record_is_absent_before_purge(store: Store, clock: ManualClock) -> None:
    """Past its retention a record is absent on read and its key is new, purged or not."""
    claim = store.claim(ident(), "fp-1", lease=LEASE, retention=RETENTION)
    store.complete(ident(), claim.token, b"old", retention=60)
    clock.advance(59)
    assert store.get(ident()) is not None
    clock.advance(1)
    assert store.get(ident()) is None
    assert store.list_records() == []
    again = store.claim(ident(), "fp-2", lease=LEASE, retention=RETENTION)
    assert again.acquired
    assert again.record.fingerprint == "fp-2"


def test_b21_purge_deletes_in_bounded_batches(store: Store, clock: ManualClock) -> None:
    """purge_expired deletes at most `limit` expired records a call and keeps live ones."""
    for index in range(7):
        claim = store.claim(ident(f"old-{index}"), "fp", lease=LEASE, retention=RETENTION)
        store.complete(ident(f"old-{index}"), claim.token, b"x", retention=10)
    clock.advance(11)
    store.claim(ident("live"), "fp", lease=LEASE, retention=RETENTION)
    assert store.purge_expired(limit=3) == 3
    assert store.purge_expired(limit=3) == 3
    assert store.purge_expired(limit=3) == 1
    assert store.purge_expired(limit=3) == 0
    assert [r.identity.key for r in store.list_records()] == ["live"]


def test_delete_unsticks_an_in_flight_key(store: Store) -> None:
    """delete removes a record whatever its state, so the key can run again."""
    store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert store.delete(ident()) is True
    assert store.delete(ident()) is False
    assert store.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired


def test_list_records_filters_and_orders(store: Store, clock: ManualClock) -> None:
    """list_records filters by namespace, scope, state and age, newest first, up to a limit."""
    first = store.claim(ident("k1", scope="a"), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(1)
    store.claim(ident("k2", scope="b"), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(1)
    store.claim(ident("k3", scope="a", namespace="other"), "fp", lease=LEASE, retention=RETENTION)
    store.complete(ident("k1", scope="a"), first.token, b"12345", retention=RETENTION)
    keys = [r.identity.key for r in store.list_records()]
    assert keys == ["k3", "k2", "k1"]
    assert [r.identity.key for r in store.list_records(scope="a")] == ["k3", "k1"]
    assert [r.identity.key for r in store.list_records(namespace="test")] == ["k2", "k1"]
    assert [r.identity.key for r in store.list_records(state=State.DONE)] == ["k1"]
    before = store.clock.now() - 0.5
    assert [r.identity.key for r in store.list_records(created_before=before)] == ["k2", "k1"]
    assert len(store.list_records(limit=2)) == 2


def test_stats_counts_live_records(store: Store, clock: ManualClock) -> None:
    """stats counts records by state, stored bytes and the oldest in-flight claim."""
    empty = store.stats()
    assert (empty.in_flight, empty.done, empty.bytes_stored) == (0, 0, 0)
    assert empty.oldest_in_flight_at is None
    oldest = store.claim(ident("a"), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(5)
    store.claim(ident("b"), "fp", lease=LEASE, retention=RETENTION)
    done = store.claim(ident("c"), "fp", lease=LEASE, retention=RETENTION)
    store.complete(ident("c"), done.token, b"x" * 100, retention=RETENTION)
    stats = store.stats()
    assert (stats.in_flight, stats.done, stats.bytes_stored) == (2, 1, 100)
    assert stats.oldest_in_flight_at == pytest.approx(oldest.record.created_at)


HOSTILE_KEYS = [
    'quote"s and \\backslash',
    "nul\x00byte",
    "percent%s%d%%",
    "'; DROP TABLE retrysafe_records; --",
    "k" * 255,
    "non-ascii: ключ · 鍵 · é",
    "lone surrogate \udcff",
    "*glob?[chars]{tag}",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_b34_hostile_keys_round_trip(store: Store, key: str) -> None:
    """Keys with quotes, NUL, %, SQL, 255 characters and non-ASCII are stored and found intact."""
    identity = ident(key, scope=key)
    claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
    assert claim.acquired
    store.complete(identity, claim.token, key.encode("utf-8", "surrogatepass"), retention=RETENTION)
    record = store.get(identity)
    assert record is not None
    assert record.identity == identity
    assert record.outcome == key.encode("utf-8", "surrogatepass")
    assert [r.identity for r in store.list_records()] == [identity]
    assert store.get(ident(key[:-1] or "x", scope=key)) is None


def test_b15_wait_returns_when_record_completes(
    make_store: Callable[[], Store],
) -> None:
    """A waiter is released with the outcome when the holder completes, before its timeout."""
    holder, waiter = make_store(), make_store()
    claim = holder.claim(ident(), "fp", lease=LEASE, retention=RETENTION)

    def complete_soon() -> None:
        time.sleep(0.2)
        holder.complete(ident(), claim.token, b"done", retention=RETENTION)

    thread = threading.Thread(target=complete_soon)
    thread.start()
    record = waiter.wait(ident(), timeout=20)
    thread.join()
    assert record is not None
    assert record.state is State.DONE
    assert record.outcome == b"done"


def test_b15_wait_times_out_on_live_lease(store: Store) -> None:
    """A waiter whose holder never finishes gets the in-flight record back after its timeout."""
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    record = store.wait(ident(), timeout=0.3)
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert record.token == claim.token


def test_b15_wait_returns_absent_after_release(store: Store) -> None:
    """A waiter on a released key gets None, so it can claim the key itself."""
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.release(ident(), claim.token)
    assert store.wait(ident(), timeout=5) is None


def test_b7_one_winner_among_50_threads(make_store: Callable[[], Store]) -> None:
    """Fifty threads claiming one key at once: exactly one acquires it."""
    stores = [make_store() for _ in range(4)]
    barrier = threading.Barrier(50)

    def contend(index: int) -> bool:
        barrier.wait()
        claim = stores[index % len(stores)].claim(
            ident("contended"), "fp", lease=LEASE, retention=RETENTION
        )
        return claim.acquired

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(contend, range(50)))
    assert results.count(True) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_b19_a_closed_store_refuses_with_store_closed_error(store: Store) -> None:
    """A store that was closed (sqlite, PostgreSQL, MySQL: the stores that own a pool or a
    thread) refuses every later call with `StoreClosedError`, on both faces: the flow then
    knows that holding an outcome for a retry is pointless (B19). Before, the async PostgreSQL
    store went on storing through a connection its pipeline opened again, never closed."""
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.close()
    with pytest.raises(StoreClosedError):
        store.complete(ident(), claim.record.token, b"outcome", retention=RETENTION)
    with pytest.raises(StoreClosedError):
        store.claim(ident("key-2"), "fp", lease=LEASE, retention=RETENTION)
