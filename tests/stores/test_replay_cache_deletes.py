"""The replay cache hears deletes made by other processes (Redis `PUBLISH`, PostgreSQL
`pg_notify`), and answers nothing from memory while it cannot hear them (B10, B13): after its
subscription broke, or stalled (a relay in front of the real server, `tests/flow/relay.py`)."""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retrysafe import Identity, open_store
from retrysafe._record import State
from retrysafe.stores import _deletes as deletes
from retrysafe.stores._deletes import LISTENER_NAME
from retrysafe.stores.cached import ReplayCache
from tests.conftest import fresh_store_url
from tests.flow.relay import Relay

IDENTITY = Identity("orders", "tenant", "k-1")
LEASE, RETENTION = 30.0, 3600.0
CACHED = "replay_cache=100&replay_cache_ttl=100000"  # only a heard delete can drop an entry
STALL_FOUND = 15.0  # seconds: a receive (1 s), the check's timeout (1 s, 2 for libpq), and slack


@pytest.fixture(params=["postgres", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store's URL on each backend that announces deletes."""
    with fresh_store_url(str(request.param), request, tmp_path) as made:
        yield made


def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait (bounded) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def complete(store: ReplayCache, fingerprint: str = "f") -> None:
    """Claim IDENTITY and complete it with an outcome."""
    claim = store.claim(IDENTITY, fingerprint, lease=LEASE, retention=RETENTION)
    assert claim.acquired
    store.complete(IDENTITY, claim.record.token, b"outcome", retention=RETENTION)


def replays_from_memory(store: ReplayCache) -> bool:
    """Claim IDENTITY once more: whether memory answered it (a replay, never a new claim)."""
    hits = store.hits
    claim = store.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION)
    assert not claim.acquired
    assert claim.record.state is State.DONE
    return store.hits == hits + 1


def test_b10_a_delete_made_by_another_process_is_heard_and_the_key_runs_again(
    url: str, opened: Callable[[str], ReplayCache]
) -> None:
    """Another process deletes a completed key this cache holds: the cache hears it and the
    next claim here runs the key again, however long the cache would have kept it."""
    cache = opened(f"{url}&{CACHED}")
    eventually(lambda: cache.listening, "subscribed to the store's deletes")
    complete(cache)
    assert replays_from_memory(cache)
    elsewhere = open_store(url)
    try:
        assert elsewhere.delete(IDENTITY)
    finally:
        elsewhere.close()
    eventually(lambda: cache.get(IDENTITY) is None, "the delete was heard")
    assert cache.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION).acquired


def test_b10_a_lost_subscription_empties_the_cache_until_it_is_back(
    url: str, opened: Callable[[str], ReplayCache]
) -> None:
    """When the subscription to deletes breaks, deletes may be missed: the cache forgets what
    it held and answers from the store until it has subscribed again."""
    cache = opened(f"{url}&{CACHED}")
    eventually(lambda: cache.listening, "subscribed to the store's deletes")
    complete(cache)
    assert replays_from_memory(cache)
    assert cache.subscriptions == 1
    kill_delete_subscribers(url)
    eventually(lambda: cache.subscriptions == 2 and cache.listening, "subscribed again")
    assert not replays_from_memory(cache)  # emptied: this one came from the store
    assert replays_from_memory(cache)


def test_b10_a_stalled_delete_listener_empties_the_cache_until_it_is_back(
    url: str, opened: Callable[[str], ReplayCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete listener's link that stalls (open, nothing coming back: a hung server, a route
    that drops packets) could not hear deletes: its health check fails within its timeout, so
    the cache forgets what it held and answers from the store until it has subscribed again."""
    monkeypatch.setattr(deletes, "_HEALTH_CHECK", 0.5)  # check when quiet for a receive (1 s)
    relay = Relay.before(url)
    cache = None
    try:
        cache = opened(relay.url(url, f"{CACHED}&connect_timeout=1"))
        eventually(lambda: cache.listening, "subscribed to the store's deletes")
        complete(cache)
        assert replays_from_memory(cache)
        relay.stall()
        eventually(lambda: not cache.listening, "the stall found", timeout=STALL_FOUND)
        relay.resume()
        eventually(lambda: cache.subscriptions == 2 and cache.listening, "subscribed again")
        assert not replays_from_memory(cache)  # emptied: this one came from the store
        assert replays_from_memory(cache)
    finally:
        if cache is not None:  # its listener ends before its link does, which it would log
            cache.close()
        relay.close()


def test_a_cache_dropped_without_closing_ends_its_listener(url: str) -> None:
    """A cache nobody closed and nobody uses any more stops its listener thread, which closes
    its connection."""
    cache = open_store(f"{url}&{CACHED}")
    assert isinstance(cache, ReplayCache)
    eventually(functools.partial(getattr, cache, "listening"), "subscribed to deletes")
    listener = cache._listener
    assert listener is not None
    thread, store = listener._thread, cache.store
    assert thread is not None
    del cache, listener
    gc.collect()
    thread.join(10)
    store.close()
    assert not thread.is_alive()


def test_b10_a_read_that_raced_a_heard_delete_is_not_kept() -> None:
    """A record read from the store before a delete is heard, and kept after it, would be
    stale: it is not kept."""
    from retrysafe.stores.memory import MemoryStore

    store = MemoryStore()
    cache = ReplayCache(store, max_records=10)
    claim = cache.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION)
    done = store.complete(IDENTITY, claim.record.token, b"outcome", retention=RETENTION)
    epoch = cache._epoch
    cache.forget_id(IDENTITY.digest())  # heard while the read was in flight
    cache._keep(done, epoch)
    assert cache.get(IDENTITY) == done  # from the store
    assert not replays_from_memory(cache)


def kill_delete_subscribers(url: str) -> None:
    """Break every connection that listens for deletes, as a network fault would."""
    if url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url.split("?", 1)[0])
        try:
            for listener in client.client_list(_type="pubsub"):
                if listener.get("name") == LISTENER_NAME:
                    client.client_kill_filter(_id=listener["id"])
        finally:
            client.close()
        return
    import psycopg

    with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (LISTENER_NAME,),
        )
