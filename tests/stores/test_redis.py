"""The Redis store beyond the shared contract: processes racing, key layout, expiry, scripts,
pub/sub waits and failures, against a real Redis server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.crc import key_slot

from retrysafe import (
    ConfigurationError,
    Identity,
    ManualClock,
    Record,
    State,
    Store,
    StoreError,
    StoreUnavailableError,
)
from retrysafe.stores._redis_layout import record_from_string
from retrysafe.stores._redis_lua import GRACE_MS
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.redis import AsyncRedisStore, RedisStore
from tests.conftest import unique_name
from tests.servers import refused_port

pytestmark = pytest.mark.redis

LEASE = 30.0
RETENTION = 3600.0
BOTH_FACES = pytest.mark.parametrize("backend", ["redis"])


def ident(key: str = "key-1", scope: str = "tenant-a") -> Identity:
    """An identity in the test namespace."""
    return Identity("test", scope, key)


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return unique_name()


@pytest.fixture
def raw(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test database; deletes this test's keys afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def url(redis_url: str, prefix: str, raw: redis.Redis) -> str:
    """The store URL for this test's prefix (its keys are cleaned up by `raw`)."""
    return f"{redis_url}?prefix={prefix}"


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says."""
    return ManualClock()


@pytest.fixture
def store(url: str, clock: ManualClock) -> Iterator[RedisStore]:
    """A sync Redis store on a manual clock."""
    opened = RedisStore.from_url(url, clock=clock)
    yield opened
    opened.close()


def key_of(prefix: str, identity: Identity) -> bytes:
    """The Redis key the store uses for `identity`."""
    return f"{prefix}:{{{identity.digest()}}}".encode()


_RACER = """
import json, sys
from retrysafe import Identity, open_store

url, index, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = open_store(url)
store.get(Identity("race", "s", "warm-up"))  # connect before the start signal
print("ready", flush=True)
sys.stdin.readline()
order = [(index + step) % count for step in range(count)]
won = {}
for k in order:
    claim = store.claim(Identity("race", "s", f"k{k}"), "fp", lease=30, retention=60)
    won[k] = [claim.acquired, claim.token]
print(json.dumps(won), flush=True)
store.close()
"""


def test_b7_four_processes_racing_one_winner_per_key(url: str, raw: redis.Redis) -> None:
    """Four OS processes claiming the same ten keys at once: each key has exactly one winner."""
    count = 10
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, url, str(index), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(4)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None
            assert racer.stdout.readline().strip() == "ready"
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        results = [json.loads(racer.communicate(timeout=60)[0]) for racer in racers]
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()
    check = RedisStore.from_url(url)
    for k in range(count):
        winners = [result[str(k)][1] for result in results if result[str(k)][0]]
        assert len(winners) == 1, f"key k{k} had {len(winners)} winners"
        record = check.get(Identity("race", "s", f"k{k}"))
        assert record is not None
        assert record.token == winners[0]
        assert all(result[str(k)][1] == winners[0] for result in results)
    check.close()


@BOTH_FACES
def test_b7_fifty_threads_one_winner_and_one_token(make_store: Callable[[], Store]) -> None:
    """Fifty threads on one store claiming one key: one acquires, all see the winner's token."""
    store = make_store()
    barrier = threading.Barrier(50)

    def contend(_: int) -> tuple[bool, str]:
        barrier.wait()
        claim = store.claim(ident("contended"), "fp", lease=LEASE, retention=RETENTION)
        return claim.acquired, claim.token

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(contend, range(50)))
    winners = [token for acquired, token in results if acquired]
    assert len(winners) == 1
    assert {token for _, token in results} == set(winners)


def test_b20_dead_port_raises_unavailable_within_timeout() -> None:
    """A store pointed at a port nobody listens on raises StoreUnavailableError, promptly."""
    url = f"redis://127.0.0.1:{refused_port()}/0?connect_timeout=1&socket_timeout=1"
    store = RedisStore.from_url(url)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    with pytest.raises(StoreUnavailableError):
        store.get(ident())
    assert time.monotonic() - started < 2 * 1 + 3  # two calls, each bounded by the timeout
    store.close()


def test_b20_dead_port_raises_unavailable_async_face() -> None:
    """The async face raises StoreUnavailableError on a dead port too, for every kind of call."""

    async def main() -> None:
        url = f"redis://127.0.0.1:{refused_port()}/0?connect_timeout=1&socket_timeout=1"
        store = AsyncRedisStore.from_url(url)
        with pytest.raises(StoreUnavailableError):
            await store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        with pytest.raises(StoreUnavailableError):
            await store.wait(ident(), timeout=5)
        with pytest.raises(StoreUnavailableError):
            await store.list_records()
        await store.aclose()

    asyncio.run(main())


def test_b20_silent_server_raises_unavailable_within_socket_timeout() -> None:
    """A server that accepts but never answers makes a call fail after the socket timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshake; nobody ever reads or answers
        port = silent.getsockname()[1]
        store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0?socket_timeout=0.5")
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        assert time.monotonic() - started < 0.5 + 3
        store.close()


def test_other_redis_errors_become_store_errors(
    store: RedisStore, raw: redis.Redis, prefix: str
) -> None:
    """A key of the wrong type or a malformed record raises StoreError, never a redis error."""
    raw.set(key_of(prefix, ident("string")), b"not a hash")
    with pytest.raises(StoreError) as claim_error:
        store.claim(ident("string"), "fp", lease=LEASE, retention=RETENTION)
    assert not isinstance(claim_error.value, StoreUnavailableError)
    with pytest.raises(StoreError):
        store.get(ident("string"))
    raw.hset(key_of(prefix, ident("malformed")), b"state", b"done")
    with pytest.raises(StoreError):
        store.get(ident("malformed"))


def test_a_claim_replaces_a_malformed_hash_whole(
    store: RedisStore, raw: redis.Redis, prefix: str
) -> None:
    """A hash without `expires_at` is replaced by a claim, never merged into the new record."""
    raw.hset(key_of(prefix, ident()), mapping={b"state": b"done", b"outcome": b"stale"})
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert claim.acquired
    assert store.get(ident()) == claim.record
    assert raw.type(key_of(prefix, ident())) == b"string"  # rewritten whole, in layout 2


@BOTH_FACES
def test_evalsha_survives_script_flush(make_store: Callable[[], Store], redis_url: str) -> None:
    """After SCRIPT FLUSH the store reloads its scripts (NOSCRIPT) and every primitive works."""
    store = make_store()
    flusher = redis.Redis.from_url(redis_url)
    try:
        first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        flusher.script_flush()  # scripts only: the data of other tests is untouched
        assert store.renew(ident(), first.token, lease=LEASE).token == first.token
        flusher.script_flush()
        assert store.complete(ident(), first.token, b"ok", retention=RETENTION).outcome == b"ok"
        flusher.script_flush()
        assert store.purge_expired() == 0
        flusher.script_flush()
        assert store.claim(ident("other"), "fp", lease=LEASE, retention=RETENTION).acquired
    finally:
        flusher.close()


def test_b34_keys_are_hashed_and_hash_tagged(
    store: RedisStore, raw: redis.Redis, prefix: str
) -> None:
    """A record's key is the prefix and the identity digest as hash tag; the raw key never shows."""
    identity = Identity("ns", "tenant'; --", "key\x00{tag}*")
    store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
    keys = list(raw.scan_iter(match=f"{prefix}:*"))
    assert keys == [key_of(prefix, identity)]
    assert b"tenant" not in keys[0]
    assert b"tag" not in keys[0]
    assert key_slot(keys[0]) == key_slot(identity.digest().encode())
    assert key_slot(keys[0] + b":settled") == key_slot(keys[0])
    stored = record_from_string(raw.get(keys[0]))  # the identity parts are stored, for listing
    assert stored.identity == identity
    assert stored.state is State.IN_FLIGHT


def test_physical_ttl_follows_retention(
    store: RedisStore, raw: redis.Redis, prefix: str, clock: ManualClock
) -> None:
    """Every write sets PEXPIRE to the record's end plus a small grace, so Redis reclaims it."""
    key = key_of(prefix, ident())
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    ttl = raw.pttl(key)
    assert (LEASE + RETENTION) * 1000 < ttl <= (LEASE + RETENTION) * 1000 + GRACE_MS
    clock.advance(20)
    store.renew(ident(), claim.token, lease=LEASE)  # retention moves by the 20 s the lease did
    ttl = raw.pttl(key)
    assert (LEASE + RETENTION) * 1000 < ttl <= (LEASE + RETENTION) * 1000 + GRACE_MS
    store.complete(ident(), claim.token, b"ok", retention=60)
    assert 55_000 < raw.pttl(key) <= 60_000 + GRACE_MS
    other = ident("taken-over")
    store.claim(other, "fp", lease=LEASE, retention=60)
    clock.advance(LEASE + 1)
    assert store.claim(other, "fp", lease=LEASE, retention=RETENTION).taken_over
    ttl = raw.pttl(key_of(prefix, other))
    assert (LEASE + RETENTION) * 1000 < ttl <= (LEASE + RETENTION) * 1000 + GRACE_MS


def test_b21_expiry_on_read_and_purge_in_batches(
    store: RedisStore, raw: redis.Redis, prefix: str, clock: ManualClock
) -> None:
    """Past retention a record reads as absent though its key remains, and purge takes batches."""
    for index in range(25):
        claim = store.claim(ident(f"old-{index}"), "fp", lease=LEASE, retention=RETENTION)
        store.complete(ident(f"old-{index}"), claim.token, b"x", retention=10)
    for index in range(3):
        store.claim(ident(f"live-{index}"), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(11)
    assert store.get(ident("old-0")) is None
    assert raw.exists(key_of(prefix, ident("old-0")))
    assert [store.purge_expired(limit=10) for _ in range(4)] == [10, 10, 5, 0]
    assert len(list(raw.scan_iter(match=f"{prefix}:*"))) == 3
    assert store.purge_expired(limit=0) == 0


class _Scenario:
    """A record state before a claim, built the same way on any store."""

    def __init__(self, name: str, build: Callable[[Store, ManualClock], None], fp: str) -> None:
        self.name = name
        self.build = build
        self.fp = fp


def _in_flight(store: Store, clock: ManualClock) -> None:
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.checkpoint(ident(), claim.token, "phase-1")
    clock.advance(5)


def _expired_lease(store: Store, clock: ManualClock) -> None:
    _in_flight(store, clock)
    clock.advance(LEASE)


def _done(store: Store, clock: ManualClock) -> None:
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(1)
    store.complete(ident(), claim.token, b"outcome", retention=100)
    clock.advance(LEASE * 2)


def _retention_over(store: Store, clock: ManualClock) -> None:
    _done(store, clock)
    clock.advance(100)


SCENARIOS = [
    _Scenario("absent", lambda store, clock: None, "fp"),
    _Scenario("in-flight-same", _in_flight, "fp"),
    _Scenario("in-flight-other", _in_flight, "fp-other"),
    _Scenario("expired-lease-same", _expired_lease, "fp"),
    _Scenario("expired-lease-other", _expired_lease, "fp-other"),
    _Scenario("done-same", _done, "fp"),
    _Scenario("done-other", _done, "fp-other"),
    _Scenario("retention-over-other", _retention_over, "fp-other"),
]


def _comparable(store: Store, clock: ManualClock, scenario: _Scenario) -> tuple[object, ...]:
    scenario.build(store, clock)
    claim = store.claim(ident(), scenario.fp, lease=LEASE, retention=RETENTION)
    record = claim.record
    return (
        claim.acquired,
        claim.taken_over,
        record.identity,
        record.fingerprint,
        record.state,
        record.created_at,
        record.lease_expires_at,
        record.expires_at,
        record.outcome,
        record.recovery_point,
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_b16_claim_mirrors_the_memory_store(url: str, scenario: _Scenario) -> None:
    """The claim script decides and writes exactly what the memory store (may_take) does."""
    memory_clock, redis_clock = ManualClock(), ManualClock()
    expected = _comparable(MemoryStore(clock=memory_clock), memory_clock, scenario)
    with_redis = RedisStore.from_url(url, clock=redis_clock)
    try:
        assert _comparable(with_redis, redis_clock, scenario) == expected
    finally:
        with_redis.close()


def test_holder_primitives_mirror_the_memory_store(url: str) -> None:
    """renew, checkpoint and complete compute the same times as the memory store, exactly."""

    def run(store: Store, clock: ManualClock) -> list[Record | None]:
        claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
        clock.advance(10.1)
        steps: list[Record | None] = [store.renew(ident(), claim.token, lease=5.3)]  # earlier
        clock.advance(0.7)
        steps.append(store.renew(ident(), claim.token, lease=47.9))
        steps.append(store.checkpoint(ident(), claim.token, "phase ✓"))
        clock.advance(3.3)
        steps.append(store.complete(ident(), claim.token, b"\x00out", retention=12.5))
        steps.append(store.get(ident()))
        return [dataclasses.replace(r, token="") if r else None for r in steps]

    memory_clock, redis_clock = ManualClock(1_700_000_000.123), ManualClock(1_700_000_000.123)
    expected = run(MemoryStore(clock=memory_clock), memory_clock)
    with_redis = RedisStore.from_url(url, clock=redis_clock)
    try:
        assert run(with_redis, redis_clock) == expected
    finally:
        with_redis.close()


def _wait_for_mark(raw: redis.Redis, key: bytes) -> None:
    """Return once a subscribed waiter has read the record and marked it watched (bounded)."""
    for _ in range(500):
        if _marked(raw, key):
            return
        time.sleep(0.01)
    raise AssertionError("the waiter never marked the record")


def _wait_for_no_subscriber(raw: redis.Redis, channel: bytes) -> int:
    """Return the subscriber count once it drops to zero, or after a bounded wait."""
    count = 1
    for _ in range(500):
        count = dict(raw.pubsub_numsub(channel))[channel]
        if count == 0:
            break
        time.sleep(0.01)
    return count


def test_b15_sync_wait_is_woken_by_publish(
    url: str, raw: redis.Redis, prefix: str, clock: ManualClock
) -> None:
    """A waiter that never rereads on its own, with an hour to go, is woken by the PUBLISH."""
    holder = RedisStore.from_url(url, clock=clock)
    waiter = RedisStore.from_url(url, clock=clock)
    waiter._recheck_every = 3600.0  # only a message can wake it before its timeout
    claim = holder.claim(ident(), "fp", lease=3600, retention=RETENTION)
    channel = key_of(prefix, ident()) + b":settled"
    results: list[Record | None] = []
    thread = threading.Thread(
        target=lambda: results.append(waiter.wait(ident(), timeout=3600)), daemon=True
    )
    thread.start()
    _wait_for_mark(raw, key_of(prefix, ident()))
    holder.complete(ident(), claim.token, b"done", retention=RETENTION)
    thread.join(timeout=60)  # a waiter the message did not wake is still waiting: no result
    assert len(results) == 1
    record = results[0]
    assert record is not None
    assert record.state is State.DONE
    assert record.outcome == b"done"
    assert _wait_for_no_subscriber(raw, channel) == 0
    holder.close()
    waiter.close()


def test_b15_async_wait_is_woken_by_publish_of_release_and_delete(
    url: str, raw: redis.Redis, prefix: str, clock: ManualClock
) -> None:
    """Async waiters are woken by a release and by a delete, and unsubscribe afterwards."""
    channel = key_of(prefix, ident()) + b":settled"

    async def woken_by(end: Callable[[AsyncRedisStore, str], Awaitable[object]]) -> object:
        holder = AsyncRedisStore.from_url(url, clock=clock)
        waiter = AsyncRedisStore.from_url(url, clock=clock)
        waiter._recheck_every = 3600.0
        claim = await holder.claim(ident(), "fp", lease=3600, retention=RETENTION)
        waiting = asyncio.create_task(waiter.wait(ident(), timeout=3600))
        for _ in range(500):  # until the waiter has subscribed and marked the record (bounded)
            if await asyncio.to_thread(_marked, raw, key_of(prefix, ident())):
                break
            await asyncio.sleep(0.01)
        await end(holder, claim.token)
        result = await asyncio.wait_for(waiting, timeout=60)  # else: not woken by the message
        await holder.aclose()
        await waiter.aclose()
        return result

    async def main() -> None:
        assert await woken_by(lambda h, token: h.release(ident(), token)) is None
        assert await woken_by(lambda h, token: h.delete(ident())) is None

    asyncio.run(main())
    assert _wait_for_no_subscriber(raw, channel) == 0


def _marked(raw: redis.Redis, key: bytes) -> bool:
    """Return whether a waiter has marked the record at `key` (byte 3 of a layout-2 value)."""
    return bool(raw.getrange(key, 2, 2) == b"1")


def _published(raw: redis.Redis, channel: bytes, action: Callable[[], object]) -> list[bytes]:
    """Run `action` while subscribed to `channel` and return the messages it published.

    A marker published after `action` ends the read: one connection receives messages in the
    order Redis ran the commands, so everything `action` published arrives before it.
    """
    pubsub = raw.pubsub()
    try:
        pubsub.subscribe(channel)
        assert pubsub.get_message(timeout=30) is not None  # the subscription's confirmation
        action()
        raw.publish(channel, b"marker")
        messages = []
        while (message := pubsub.get_message(timeout=30)) is not None:
            if message["data"] == b"marker":
                return messages
            messages.append(message["data"])
        raise AssertionError("the marker never arrived")
    finally:
        pubsub.close()


def test_only_watched_records_publish(
    store: RedisStore, raw: redis.Redis, prefix: str, clock: ManualClock
) -> None:
    """Completion and release publish only for a record a waiter's read marked (the mark
    survives a takeover); a completion nobody waits for costs no PUBLISH."""
    channel = key_of(prefix, ident()) + b":settled"

    def settle(watched: bool) -> None:
        claim = store.claim(ident(), "fp", lease=LEASE, retention=1)
        if watched:
            store._run(store._watch, key_of(prefix, ident()))
        store.release(ident(), claim.token)
        claim = store.claim(ident(), "fp", lease=LEASE, retention=1)
        if watched:
            store._run(store._watch, key_of(prefix, ident()))
            clock.advance(LEASE)
            claim = store.claim(ident(), "fp", lease=LEASE, retention=1)
            assert claim.taken_over
        store.complete(ident(), claim.token, b"done", retention=1)
        clock.advance(2)  # retention over: the next claim starts a fresh, unmarked record

    assert _published(raw, channel, lambda: settle(watched=False)) == []
    assert _published(raw, channel, lambda: settle(watched=True)) == [b"released", b"done"]


def test_b15_wait_sees_a_completion_made_before_it_subscribed(store: RedisStore) -> None:
    """A record completed before the wait began is returned at once, with no message needed."""
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.complete(ident(), claim.token, b"early", retention=RETENTION)
    store._recheck_every = 3600.0
    record = store.wait(ident(), timeout=3600)
    assert record is not None
    assert record.outcome == b"early"


def test_from_url_options_and_refusals(redis_url: str, prefix: str, raw: redis.Redis) -> None:
    """prefix and timeouts come from the URL; unknown options, bad values, schemes refuse."""
    store = RedisStore.from_url(f"{redis_url}?prefix={prefix}&socket_timeout=2&connect_timeout=2")
    store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert raw.exists(key_of(prefix, ident()))
    store.close()
    for bad in [
        f"{redis_url}?db_size=3",
        f"{redis_url}?socket_timeout=soon",
        f"{redis_url}?socket_timeout=0",
        f"{redis_url}?prefix=a{{b}}",
        f"{redis_url}?prefix=",
        "memcached://127.0.0.1:11211",
    ]:
        with pytest.raises(ConfigurationError):
            RedisStore.from_url(bad)
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError):
        RedisStore(
            decoding, prefix=prefix
        )  # outcomes are bytes: a decoding client would break them
    decoding.close()


def test_importing_retrysafe_does_not_import_redis() -> None:
    """`import retrysafe` leaves redis-py unimported: it is an optional extra."""
    code = "import sys, retrysafe; sys.exit('redis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
