"""The Redis store's record layouts: records written as hashes by the previous release (layout
1) still go through every primitive, beside the strings written now (layout 2); takeovers of
either are atomic and fence the old holder. Against a real Redis server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from retrysafe import FencedError, Identity, ManualClock, Record, State
from retrysafe.stores.memory import MemoryStore
from retrysafe.stores.redis import AsyncRedisStore, RedisStore
from tests.conftest import unique_name

pytestmark = pytest.mark.redis

LEASE = 30.0
RETENTION = 3600.0
NOW = 1_700_000_000.25


def ident(key: str = "key-1") -> Identity:
    """An identity in the test namespace."""
    return Identity("test", "tenant-a", key)


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
def clock() -> ManualClock:
    """A clock that moves only when the test says."""
    return ManualClock(NOW)


@pytest.fixture
def store(redis_url: str, prefix: str, clock: ManualClock) -> Iterator[RedisStore]:
    """A sync Redis store on a manual clock."""
    opened = RedisStore.from_url(f"{redis_url}?prefix={prefix}", clock=clock)
    yield opened
    opened.close()


def key_of(prefix: str, identity: Identity) -> bytes:
    """The Redis key the store uses for `identity`."""
    return f"{prefix}:{{{identity.digest()}}}".encode()


def write_hash(raw: redis.Redis, prefix: str, record: Record, *, watched: bool = False) -> None:
    """Write `record` as the previous release did: one hash, each time as Python's repr (what
    redis-py sends for a float), the identity parts beside the fields, a PEXPIRE after it."""
    fields: dict[str, bytes | str] = {
        "namespace": record.identity.namespace,
        "scope": record.identity.scope,
        "key": record.identity.key,
        "fingerprint": record.fingerprint,
        "state": record.state.value,
        "token": record.token,
        "created_at": repr(record.created_at),
        "lease_expires_at": repr(record.lease_expires_at),
        "expires_at": repr(record.expires_at),
    }
    if record.outcome is not None:
        fields["outcome"] = record.outcome
    if record.recovery_point is not None:
        fields["recovery_point"] = record.recovery_point
    if watched:
        fields["watched"] = "1"
    key = key_of(prefix, record.identity)
    raw.hset(key, mapping=fields)  # type: ignore[arg-type]
    raw.pexpire(key, 3_600_000)


def hash_record(
    identity: Identity | None = None,
    *,
    state: State = State.IN_FLIGHT,
    token: str = "a" * 32,
    outcome: bytes | None = None,
    recovery_point: str | None = "phase-1",
    lease_expires_at: float = NOW + LEASE,
    expires_at: float = NOW + LEASE + RETENTION,
) -> Record:
    """A record as the previous release held it."""
    return Record(
        identity=identity or ident(),
        fingerprint="fp ✓",
        state=state,
        token=token,
        created_at=NOW - 1.1,
        lease_expires_at=lease_expires_at,
        expires_at=expires_at,
        outcome=outcome,
        recovery_point=recovery_point if state is State.IN_FLIGHT else None,
    )


def test_layout1_done_record_is_read_replayed_listed_and_counted(
    store: RedisStore, raw: redis.Redis, prefix: str
) -> None:
    """A completed hash is returned by get, answers a claim as a replay, and is listed and
    counted beside a layout-2 string."""
    done = hash_record(state=State.DONE, outcome=b"\x00stored", lease_expires_at=NOW)
    write_hash(raw, prefix, done)
    assert store.get(ident()) == done
    claim = store.claim(ident(), "fp ✓", lease=LEASE, retention=RETENTION)
    assert not claim.acquired
    assert claim.record == done
    mismatch = store.claim(ident(), "other", lease=LEASE, retention=RETENTION)
    assert not mismatch.acquired
    assert mismatch.record == done
    fresh = store.claim(ident("new"), "fp", lease=LEASE, retention=RETENTION)
    assert raw.type(key_of(prefix, ident("new"))) == b"string"
    assert raw.type(key_of(prefix, ident())) == b"hash"  # left where it is
    assert store.list_records() == [fresh.record, done]  # newest first
    stats = store.stats()
    assert (stats.in_flight, stats.done, stats.bytes_stored) == (1, 1, len(b"\x00stored"))
    assert stats.oldest_in_flight_at == NOW


def test_layout1_in_flight_record_is_renewed_checkpointed_and_completed(
    store: RedisStore, raw: redis.Redis, prefix: str, clock: ManualClock
) -> None:
    """The holder of a hash renews, checkpoints and completes it, with the times the memory
    store computes; a wrong token is fenced at every step (B17)."""
    held = hash_record()
    write_hash(raw, prefix, held)
    memory = MemoryStore(clock=ManualClock(NOW))
    assert memory.claim(ident(), "fp ✓", lease=LEASE, retention=RETENTION).acquired
    for primitive in (
        lambda token: store.renew(ident(), token, lease=LEASE),
        lambda token: store.checkpoint(ident(), token, "phase-2"),
        lambda token: store.complete(ident(), token, b"x", retention=RETENTION),
        lambda token: store.release(ident(), token),
    ):
        with pytest.raises(FencedError):
            primitive("b" * 32)
    clock.advance(10)
    renewed = store.renew(ident(), held.token, lease=45.5)
    assert renewed.lease_expires_at == NOW + 10 + 45.5
    assert renewed.expires_at == held.expires_at + (NOW + 10 + 45.5 - held.lease_expires_at)
    assert renewed.recovery_point == "phase-1"
    assert store.checkpoint(ident(), held.token, "phase-2 ✓").recovery_point == "phase-2 ✓"
    done = store.complete(ident(), held.token, b"\x00out", retention=99.5)
    assert done.state is State.DONE
    assert (done.lease_expires_at, done.expires_at) == (NOW + 10, NOW + 10 + 99.5)
    assert done.created_at == held.created_at
    assert store.get(ident()) == done
    assert raw.type(key_of(prefix, ident())) == b"hash"
    assert 90_000 < raw.pttl(key_of(prefix, ident())) <= 99_500 + 5_000


def test_b16_b17_layout1_takeover_keeps_the_operation_and_fences_the_old_holder(
    store: RedisStore, raw: redis.Redis, prefix: str, clock: ManualClock
) -> None:
    """A hash in flight under a lapsed lease is taken over by the same request: its creation
    time and recovery point stay, and the old holder can no longer complete or release it."""
    held = hash_record()
    write_hash(raw, prefix, held)
    other = store.claim(ident(), "another request", lease=LEASE, retention=RETENTION)
    assert not other.acquired
    assert other.record == held
    clock.advance(LEASE)
    taken = store.claim(ident(), "fp ✓", lease=LEASE, retention=RETENTION)
    assert taken.acquired
    assert taken.taken_over
    assert taken.token != held.token
    assert (taken.record.created_at, taken.record.recovery_point) == (NOW - 1.1, "phase-1")
    with pytest.raises(FencedError):
        store.complete(ident(), held.token, b"late", retention=RETENTION)
    with pytest.raises(FencedError):
        store.release(ident(), held.token)
    assert store.complete(ident(), taken.token, b"ok", retention=RETENTION).outcome == b"ok"


def test_layout1_release_delete_purge_and_replacement(
    store: RedisStore, raw: redis.Redis, prefix: str, clock: ManualClock
) -> None:
    """A hash is released by its holder and deleted by anyone; past its retention it is purged,
    or replaced whole by a claim, which writes a layout-2 string."""
    write_hash(raw, prefix, hash_record(ident("released")))
    store.release(ident("released"), "a" * 32)
    assert not raw.exists(key_of(prefix, ident("released")))
    write_hash(raw, prefix, hash_record(ident("deleted"), state=State.DONE, outcome=b"x"))
    assert store.delete(ident("deleted"))
    assert store.get(ident("deleted")) is None
    for name in ("purged", "replaced"):
        write_hash(raw, prefix, hash_record(ident(name), state=State.DONE, outcome=b"x"))
    string = store.claim(ident("string"), "fp", lease=LEASE, retention=RETENTION)
    store.complete(ident("string"), string.token, b"x", retention=1)
    clock.advance(LEASE + RETENTION + 1)
    assert store.get(ident("purged")) is None
    claim = store.claim(ident("replaced"), "new", lease=LEASE, retention=RETENTION)
    assert claim.acquired
    assert not claim.taken_over
    assert raw.type(key_of(prefix, ident("replaced"))) == b"string"
    assert store.purge_expired() == 2  # the hash and the string past their retention
    assert not raw.exists(key_of(prefix, ident("purged")))
    assert not raw.exists(key_of(prefix, ident("string")))
    assert store.list_records() == [claim.record]


def test_b15_wait_on_a_layout1_record_is_woken_by_its_completion(
    redis_url: str, prefix: str, raw: redis.Redis, clock: ManualClock
) -> None:
    """A waiter marks a hash `watched` as before, and its holder's completion publishes."""
    held = hash_record(lease_expires_at=NOW + 3600)
    write_hash(raw, prefix, held)
    url = f"{redis_url}?prefix={prefix}"
    holder = RedisStore.from_url(url, clock=clock)
    waiter = RedisStore.from_url(url, clock=clock)
    waiter._recheck_every = 3600.0  # only the message can wake it
    results: list[Record | None] = []
    thread = threading.Thread(
        target=lambda: results.append(waiter.wait(ident(), timeout=3600)), daemon=True
    )
    thread.start()
    for _ in range(500):  # bounded: until the waiter has marked the record
        if raw.hget(key_of(prefix, ident()), "watched") is not None:
            break
        threading.Event().wait(0.01)
    else:
        raise AssertionError("the waiter never marked the hash")
    holder.complete(ident(), held.token, b"done", retention=RETENTION)
    thread.join(timeout=60)
    assert [r.outcome if r else None for r in results] == [b"done"]
    holder.close()
    waiter.close()


def test_layout1_records_on_the_async_face(
    redis_url: str, prefix: str, raw: redis.Redis, clock: ManualClock
) -> None:
    """The async face (auto-pipelined, where a WRONGTYPE reply fails only its own command)
    serves hashes beside fresh strings in the same batch."""
    write_hash(raw, prefix, hash_record(ident("done"), state=State.DONE, outcome=b"old"))
    write_hash(raw, prefix, hash_record(ident("held")))

    async def main() -> None:
        store = AsyncRedisStore.from_url(f"{redis_url}?prefix={prefix}", clock=clock)
        replay, fresh, read = await asyncio.gather(
            store.claim(ident("done"), "fp ✓", lease=LEASE, retention=RETENTION),
            store.claim(ident("fresh"), "fp", lease=LEASE, retention=RETENTION),
            store.get(ident("held")),
        )
        assert (replay.acquired, replay.record.outcome) == (False, b"old")
        assert fresh.acquired
        assert read == hash_record(ident("held"))
        done = await store.complete(ident("held"), "a" * 32, b"new", retention=RETENTION)
        assert done.outcome == b"new"
        assert await store.renew(ident("fresh"), fresh.token, lease=LEASE) is not None
        listed = await store.list_records()
        assert sorted(r.identity.key for r in listed) == ["done", "fresh", "held"]
        assert await store.delete(ident("done"))
        await store.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("layout", ["string", "hash"])
def test_b16_threads_racing_a_takeover_get_one_winner(
    redis_url: str, prefix: str, raw: redis.Redis, layout: str
) -> None:
    """Sixteen threads claiming a record whose lease lapsed: exactly one takes it over, the
    others see it in flight under the winner's token, and the old holder is fenced (B17)."""
    clock = ManualClock(NOW)
    store = RedisStore.from_url(f"{redis_url}?prefix={prefix}", clock=clock)
    if layout == "hash":
        old_token = "a" * 32
        write_hash(raw, prefix, hash_record(recovery_point=None))
    else:
        old_token = store.claim(ident(), "fp ✓", lease=LEASE, retention=RETENTION).token
    clock.advance(LEASE)
    barrier = threading.Barrier(16)

    def contend(_: int) -> tuple[bool, bool, str]:
        barrier.wait(timeout=60)
        claim = store.claim(ident(), "fp ✓", lease=LEASE, retention=RETENTION)
        return claim.acquired, claim.taken_over, claim.token

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(contend, range(16)))
    winners = [token for acquired, taken_over, token in results if acquired and taken_over]
    assert len(winners) == 1
    assert sum(acquired for acquired, _, _ in results) == 1
    assert {token for _, _, token in results} == set(winners)
    with pytest.raises(FencedError):
        store.complete(ident(), old_token, b"late", retention=RETENTION)
    assert store.complete(ident(), winners[0], b"ok", retention=RETENTION).token == winners[0]
    assert raw.type(key_of(prefix, ident())) == layout.encode()
    store.close()


def test_b7_b16_without_set_nx_get_every_claim_goes_through_the_script(
    store: RedisStore, clock: ManualClock
) -> None:
    """On a server that refuses `SET ... NX GET` (before Redis 7.0) the store claims by the
    script alone, with the same answers: a fresh claim, one in flight, a replay, a mismatch and
    the takeover of a lapsed lease that fences the old holder."""
    store._set_get = False  # what the store sets on the server's "syntax error"
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert first.acquired
    assert not store.claim(ident(), "fp", lease=LEASE, retention=RETENTION).acquired
    clock.advance(LEASE + 1)
    taken = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert taken.acquired
    assert taken.taken_over
    with pytest.raises(FencedError):
        store.complete(ident(), first.token, b"stale", retention=RETENTION)
    store.complete(ident(), taken.token, b"done", retention=RETENTION)
    replay = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert not replay.acquired
    assert replay.record.outcome == b"done"
    mismatch = store.claim(ident(), "other", lease=LEASE, retention=RETENTION)
    assert not mismatch.acquired
    assert mismatch.record.fingerprint == "fp"


def test_a_syntax_error_reply_is_told_apart_from_other_errors() -> None:
    """The reply of a server without `SET ... NX GET` switches claims to the script; a wrong
    type (a layout-1 hash) or any other error does not."""
    from redis.exceptions import ResponseError

    from retrysafe.stores import _redis_layout as layout

    assert layout.is_syntax_error(ResponseError("syntax error"))
    assert layout.is_syntax_error(ResponseError("ERR syntax error"))
    assert not layout.is_syntax_error(ResponseError("WRONGTYPE Operation against a key"))
    assert not layout.is_syntax_error(ResponseError("NOSCRIPT No matching script"))
