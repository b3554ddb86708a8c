"""The memory store's caps (B36): refuse new claims when full, never evict a live record.

Each store test runs on the sync face and on the async face (through `BlockingFacade`); one test
goes through the real ASGI middleware to show a full store fails closed with 503 (B20).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import anyio
import httpx
import pytest
from anyio.from_thread import start_blocking_portal

from retrysafe import (
    Claim,
    ConfigurationError,
    FencedError,
    Identity,
    ManualClock,
    State,
    Store,
    StoreUnavailableError,
    open_async_store,
    open_store,
)
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from tests.http.apps import Recorder, starlette_app
from tests.http.conftest import CALLER, is_problem
from tests.stores.conftest import BlockingFacade

LEASE = 30.0
RETENTION = 3600.0
NEW_RECORD = len("test") + len("tenant-a") + len("key-1") + len("fp")
"""The bytes a new record of `ident(...)` with fingerprint "fp" counts: its strings' characters."""

MakeCapped = Callable[..., Store]


def ident(key: str = "key-1") -> Identity:
    """An identity whose parts have the lengths `NEW_RECORD` counts (keys of five characters)."""
    return Identity("test", "tenant-a", key)


def claim(store: Store, key: str, fingerprint: str = "fp") -> Claim:
    """Claim `ident(key)` with the test's lease and retention."""
    return store.claim(ident(key), fingerprint, lease=LEASE, retention=RETENTION)


@pytest.fixture
def make_capped(face: str, clock: ManualClock) -> Iterator[MakeCapped]:
    """A factory of memory stores with the given caps, on the test's face and clock."""
    with contextlib.ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal()) if face == "async" else None

        def make(**limits: int) -> Store:
            if portal is None:
                return MemoryStore(clock=clock, **limits)
            store = AsyncMemoryStore(clock=clock, **limits)
            return BlockingFacade(store, portal)  # type: ignore[return-value]

        yield make


def test_b36_count_cap_refuses_a_new_record(make_capped: MakeCapped) -> None:
    """With max_records records held, a claim of a new key is refused and writes nothing."""
    store = make_capped(max_records=2)
    assert claim(store, "key-1").acquired
    assert claim(store, "key-2").acquired
    with pytest.raises(StoreUnavailableError, match=r"The memory store is full: 2 records / ") as e:
        claim(store, "key-3")
    assert "(max_records=2, max_bytes=None)" in str(e.value)
    assert "\n" not in str(e.value)
    assert store.get(ident("key-3")) is None
    assert store.stats().in_flight == 2


def test_b36_byte_cap_refuses_a_record_that_would_pass_it(make_capped: MakeCapped) -> None:
    """A new record that would take the bytes held past max_bytes is refused; one that
    exactly reaches it is not; a stored outcome counts with its bytes."""
    store = make_capped(max_bytes=2 * NEW_RECORD)
    assert claim(store, "key-1").acquired
    assert claim(store, "key-2").acquired  # exactly at the cap
    with pytest.raises(StoreUnavailableError, match=rf"2 records / {2 * NEW_RECORD} bytes"):
        claim(store, "key-3")
    store.delete(ident("key-2"))
    first = store.get(ident("key-1"))
    assert first is not None
    store.complete(ident("key-1"), first.token, b"x", retention=RETENTION)
    with pytest.raises(StoreUnavailableError, match=rf"1 records / {NEW_RECORD + 1} bytes"):
        claim(store, "key-3")  # the one outcome byte leaves no room for a whole record


def test_b36_release_delete_and_purge_give_the_bytes_back(
    make_capped: MakeCapped, clock: ManualClock
) -> None:
    """Room freed by release, delete and purge is exact: one record's worth fits again."""
    store = make_capped(max_bytes=NEW_RECORD)
    held = claim(store, "key-1")
    with pytest.raises(StoreUnavailableError):
        claim(store, "key-2")
    store.release(ident("key-1"), held.token)
    held = claim(store, "key-2")
    assert held.acquired
    store.complete(ident("key-2"), held.token, b"outcome", retention=10.0)
    assert store.delete(ident("key-2"))
    held = claim(store, "key-3")
    store.complete(ident("key-3"), held.token, b"outcome", retention=10.0)
    clock.advance(11.0)
    assert store.purge_expired() == 1
    assert claim(store, "key-4").acquired


def test_b36_expired_records_make_room(make_capped: MakeCapped, clock: ManualClock) -> None:
    """A full store drops the records past their retention before it refuses anything."""
    store = make_capped(max_records=2, max_bytes=10_000)
    done = claim(store, "key-1")
    store.complete(ident("key-1"), done.token, b"a" * 5000, retention=10.0)
    store.claim(ident("key-2"), "fp", lease=1.0, retention=5.0)  # in flight, never completed
    with pytest.raises(StoreUnavailableError):
        claim(store, "key-3")
    clock.advance(11.0)  # both are past their retention now
    assert claim(store, "key-3").acquired
    assert claim(store, "key-4").acquired
    assert store.get(ident("key-1")) is None
    assert store.get(ident("key-2")) is None


def test_b36_live_records_are_never_evicted(make_capped: MakeCapped, clock: ManualClock) -> None:
    """Records within their retention stay, done or in flight (even with an expired lease),
    however many new claims are refused."""
    store = make_capped(max_records=2)
    done = claim(store, "key-1")
    store.complete(ident("key-1"), done.token, b"paid", retention=RETENTION)
    in_flight = claim(store, "key-2")
    clock.advance(LEASE + 1)  # key-2's lease has expired; its retention has not
    for n in range(50):
        with pytest.raises(StoreUnavailableError):
            claim(store, f"new{n:02d}")
    kept = store.get(ident("key-1"))
    assert kept is not None
    assert kept.outcome == b"paid"
    running = store.get(ident("key-2"))
    assert running is not None
    assert running.token == in_flight.token
    store.complete(ident("key-2"), in_flight.token, b"late", retention=RETENTION)


def test_b36_existing_keys_are_answered_when_full(
    make_capped: MakeCapped, clock: ManualClock
) -> None:
    """A full store still replays, reports a mismatch or one in flight, and lets an expired
    lease be taken over: none of them adds a record."""
    store = make_capped(max_records=2)
    done = claim(store, "key-1")
    store.complete(ident("key-1"), done.token, b"paid", retention=RETENTION)
    first = claim(store, "key-2")
    replay = claim(store, "key-1")
    assert not replay.acquired
    assert replay.record.state is State.DONE
    assert replay.record.outcome == b"paid"
    mismatch = claim(store, "key-1", fingerprint="other")
    assert not mismatch.acquired
    assert mismatch.record.fingerprint == "fp"
    busy = claim(store, "key-2")
    assert not busy.acquired
    assert busy.record.token == first.token
    clock.advance(LEASE + 1)
    takeover = claim(store, "key-2")
    assert takeover.acquired
    assert takeover.taken_over
    store.complete(ident("key-2"), takeover.token, b"done", retention=RETENTION)
    assert claim(store, "key-2").record.outcome == b"done"


def test_b36_completion_over_the_byte_cap_lands(make_capped: MakeCapped) -> None:
    """complete and checkpoint of a held claim land even past max_bytes; the store then
    refuses new keys until it has room, and replays the outcome."""
    store = make_capped(max_bytes=NEW_RECORD + 10)
    held = claim(store, "key-1")
    store.checkpoint(ident("key-1"), held.token, "phase-" * 10)
    outcome = bytes(1000)
    done = store.complete(ident("key-1"), held.token, outcome, retention=RETENTION)
    assert done.outcome == outcome
    over = NEW_RECORD + 60 + 1000
    with pytest.raises(StoreUnavailableError, match=rf"1 records / {over} bytes"):
        claim(store, "key-2")
    assert claim(store, "key-1").record.outcome == outcome


def test_b36_expiry_heap_stays_bounded() -> None:
    """Entries left on the expiry heap by released records do not pile up: the heap is
    rebuilt once they outnumber the records by the slack."""
    store = MemoryStore(max_records=1_000_000)
    for n in range(20_000):
        held = claim(store, f"k{n:04d}")
        store.release(ident(f"k{n:04d}"), held.token)
    assert len(store._expiries) <= 1024 + 1


def test_b36_byte_total_matches_the_records_after_any_history(clock: ManualClock) -> None:
    """After a random mix of every primitive, the running byte total equals the sum of the
    records' sizes."""
    from retrysafe.stores._sync.memory import _size

    store = MemoryStore(clock=clock, max_records=40, max_bytes=4000)
    rng = random.Random(36)
    tokens: dict[str, str] = {}
    for _ in range(5000):
        key = f"key{rng.randrange(60):02d}"
        token = tokens.get(key, "none")
        action = rng.choice(["claim", "complete", "release", "renew", "checkpoint", "delete"])
        with contextlib.suppress(StoreUnavailableError, FencedError):
            if action == "claim":
                got = store.claim(ident(key), rng.choice(["fp", "fp-2"]), lease=2.0, retention=5.0)
                tokens[key] = got.token
            elif action == "complete":
                size = rng.randrange(200)
                store.complete(ident(key), token, bytes(size), retention=rng.random() * 9)
            elif action == "release":
                store.release(ident(key), token)
            elif action == "renew":
                store.renew(ident(key), token, lease=3.0)
            elif action == "checkpoint":
                store.checkpoint(ident(key), token, "p" * rng.randrange(9))
            else:
                store.delete(ident(key))
        if rng.random() < 0.01:
            store.purge_expired(limit=5)
        clock.advance(rng.random() * 0.2)
        rows = store._records.items()
        assert store._bytes == sum(_size(k, row) for k, row in rows)


@pytest.mark.parametrize(
    ("url", "records", "total"),
    [
        ("memory://", None, None),
        ("memory://?max_records=5", 5, None),
        ("memory://?max_bytes=1000", None, 1000),
        ("memory://?max_bytes=1000&max_records=5", 5, 1000),
    ],
)
def test_b36_url_options(url: str, records: int | None, total: int | None) -> None:
    """`memory://` takes max_records and max_bytes, on both faces."""
    store = open_store(url)
    async_store = open_async_store(url)
    assert isinstance(store, MemoryStore)
    assert isinstance(async_store, AsyncMemoryStore)
    for built in (store, async_store):
        assert (built._max_records, built._max_bytes) == (records, total)


def test_b36_url_caps_apply(clock: ManualClock) -> None:
    """A cap given in the URL refuses the claim beyond it."""
    store = open_store("memory://?max_records=1", clock=clock)
    claim(store, "key-1")
    with pytest.raises(StoreUnavailableError, match=r"max_records=1, max_bytes=None"):
        claim(store, "key-2")


FORM = "A memory store URL is just 'memory://', optionally with '?max_records=N&max_bytes=B', not"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory://host", f"{FORM} 'memory://host'."),
        ("memory:///path", f"{FORM} 'memory:///path'."),
        ("memory://#cap", f"{FORM} 'memory://#cap'."),
        (
            "memory://?max_record=5",
            "Unknown store URL option 'max_record'; known options: max_bytes, max_records.",
        ),
        ("memory://?max_records=ten", "Store URL option max_records='ten' is not a valid int."),
        ("memory://?max_records=1.5", "Store URL option max_records='1.5' is not a valid int."),
        ("memory://?max_bytes=", "Store URL option max_bytes='' is not a valid int."),
        (
            "memory://?max_records=0",
            "The memory store option max_records must be a positive integer, not 0.",
        ),
        (
            "memory://?max_bytes=-1",
            "The memory store option max_bytes must be a positive integer, not -1.",
        ),
        (
            "memory://?max_records=1&max_records=2",
            "Store URL option max_records is given twice in"
            " 'memory://?max_records=1&max_records=2'.",
        ),
    ],
)
def test_b36_invalid_urls_are_refused(url: str, message: str) -> None:
    """Anything but the two options with positive integers is refused, in one precise line."""
    for opener in (open_store, open_async_store):
        with pytest.raises(ConfigurationError) as error:
            opener(url)
        assert str(error.value) == message


@pytest.mark.parametrize("value", [0, -5, True, 2.0, "3"])
@pytest.mark.parametrize("name", ["max_records", "max_bytes"])
def test_b36_invalid_arguments_are_refused(name: str, value: object) -> None:
    """The constructors take positive integers or None for the caps."""
    for store_class in (MemoryStore, AsyncMemoryStore):
        with pytest.raises(ConfigurationError, match=rf"option {name} must be a positive"):
            store_class(**{name: value})  # type: ignore[arg-type]


def test_b36_http_request_beyond_the_cap_gets_503_and_does_not_run(clock: ManualClock) -> None:
    """Through the ASGI middleware, a new key on a full memory store is answered 503
    problem+json `store-unavailable` with Retry-After, and the handler does not run; a replay
    still works, and the key is served once the retention of the first has ended."""
    recorder = Recorder()
    store = AsyncMemoryStore(clock=clock, max_records=1)
    app = IdempotencyMiddleware(
        starlette_app(recorder), store=store, scope_secret="s" * 32, retention=60.0
    )

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": CALLER}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://app", headers=headers
        ) as client:

            async def pay(key: str, amount: int) -> httpx.Response:
                return await client.post(
                    "/payments", json={"amount": amount}, headers={"Idempotency-Key": key}
                )

            first = await pay("a", 1)
            assert first.status_code == 201
            refused = await pay("b", 2)
            assert is_problem(refused, 503, "store-unavailable")
            assert int(refused.headers["retry-after"]) >= 1
            assert recorder.calls["/payments"] == 1
            replay = await pay("a", 1)
            assert replay.headers["idempotent-replayed"] == "true"
            assert replay.json() == first.json()
            clock.advance(61.0)
            later = await pay("b", 2)
            assert later.status_code == 201
            assert recorder.calls["/payments"] == 2

    anyio.run(scenario)
