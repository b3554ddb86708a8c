"""The replay cache (`?replay_cache=N`): completed records answered from memory, on every real
store, without ever running a key twice (B10, B13, B21)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from retrysafe import ConfigurationError, Identity, ManualClock, open_async_store, open_store
from retrysafe._record import State
from retrysafe.stores.cached import AsyncReplayCache, ReplayCache
from tests.conftest import fresh_store_url
from tests.stores.conftest import wait_listening

IDENTITY = Identity("orders", "tenant", "k-1")
LEASE, RETENTION = 30.0, 3600.0


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store's URL on each backend."""
    with fresh_store_url(str(request.param), request, tmp_path) as made:
        yield made


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store's URL on each backend that two processes can share."""
    with fresh_store_url(str(request.param), request, tmp_path) as made:
        yield made


def with_cache(url: str, options: str = "replay_cache=100") -> str:
    """Return `url` with the cache's options."""
    return f"{url}{'&' if '?' in url else '?'}{options}"


def complete(store: ReplayCache, fingerprint: str = "f") -> None:
    """Claim IDENTITY and complete it with an outcome."""
    claim = store.claim(IDENTITY, fingerprint, lease=LEASE, retention=RETENTION)
    assert claim.acquired
    store.complete(IDENTITY, claim.record.token, b"outcome", retention=RETENTION)


def test_b10_b13_a_completed_record_is_answered_from_memory(
    url: str, opened: Callable[[str], ReplayCache]
) -> None:
    """After a completion, a replay and a mismatch are answered without the store: the same
    record the store would return, never a new claim."""
    store = opened(with_cache(url))
    complete(store)
    replay = store.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION)
    mismatch = store.claim(IDENTITY, "other", lease=LEASE, retention=RETENTION)
    assert store.hits == 2
    for claim in (replay, mismatch):
        assert not claim.acquired
        assert claim.record.state is State.DONE
        assert claim.record.outcome == b"outcome"
        assert claim.record.fingerprint == "f"
    assert store.get(IDENTITY) == replay.record


def test_b10_a_replay_found_in_the_store_is_kept_for_the_next(
    shared_url: str, opened: Callable[[str], ReplayCache]
) -> None:
    """A record completed by another process is read from the store once, then from memory."""
    writer, reader = opened(with_cache(shared_url)), opened(with_cache(shared_url))
    complete(writer)
    for _ in range(3):
        assert not reader.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION).acquired
    assert reader.hits == 2


def test_b21_an_expired_record_is_never_answered_from_memory(
    url: str, opened: Callable[[str], ReplayCache], clock: ManualClock
) -> None:
    """Past its retention the key is new again, cache or not."""
    store = opened(with_cache(url, "replay_cache=100&replay_cache_ttl=100000"))
    complete(store)
    clock.advance(RETENTION + 1)
    assert store.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION).acquired
    assert store.hits == 0


def test_b10_an_in_flight_record_always_goes_to_the_store(
    url: str, opened: Callable[[str], ReplayCache]
) -> None:
    """A claim on a key in flight is the store's to decide (wait, refuse, take over)."""
    store = opened(with_cache(url))
    first = store.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION)
    second = store.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION)
    assert first.acquired
    assert not second.acquired
    assert second.record.state is State.IN_FLIGHT
    assert store.hits == 0


def test_a_delete_here_is_seen_at_once_and_elsewhere_within_the_ttl(
    tmp_path: Path, opened: Callable[[str], ReplayCache], clock: ManualClock
) -> None:
    """On SQLite, which announces no deletes: a delete through the cache drops the entry; one
    through another process is seen once the entry's time is up, and until then the old outcome
    is replayed (never a second run). Redis and PostgreSQL announce theirs
    (test_replay_cache_deletes.py)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    store = opened(with_cache(url, "replay_cache=100&replay_cache_ttl=10"))
    complete(store)
    assert store.delete(IDENTITY)
    assert store.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION).acquired
    store.release(IDENTITY, store.get(IDENTITY).token)  # type: ignore[union-attr]
    complete(store)
    elsewhere = open_store(url, clock=clock)
    try:
        assert elsewhere.delete(IDENTITY)
    finally:
        elsewhere.close()
    stale = store.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION)
    assert not stale.acquired
    assert stale.record.state is State.DONE
    clock.advance(11)
    assert store.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION).acquired


def test_the_cache_is_bounded_by_records_and_bytes(clock: ManualClock) -> None:
    """The least recently used records go first, by count and by outcome bytes."""
    store = open_store("memory://?replay_cache=2&replay_cache_bytes=10", clock=clock)
    assert isinstance(store, ReplayCache)
    identities = [Identity("n", "s", f"k{i}") for i in range(3)]
    for identity in identities:
        claim = store.claim(identity, "f", lease=LEASE, retention=RETENTION)
        store.complete(identity, claim.record.token, b"12345", retention=RETENTION)
    for identity in reversed(identities):  # only the last two are kept (2 records, 10 bytes)
        store.claim(identity, "f", lease=LEASE, retention=RETENTION)
    assert store.hits == 2
    big = Identity("n", "s", "big")
    claim = store.claim(big, "f", lease=LEASE, retention=RETENTION)
    store.complete(big, claim.record.token, b"x" * 11, retention=RETENTION)  # over the bound
    store.claim(big, "f", lease=LEASE, retention=RETENTION)
    assert store.hits == 2  # never kept


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("replay_cache=x", "not a valid int"),
        ("replay_cache=-1", "at least one record"),
        ("replay_cache_ttl=5", "come with replay_cache=N"),
        ("replay_cache=5&replay_cache_ttl=0", "more than 0 s"),
    ],
)
def test_bad_cache_options_are_one_clear_error(query: str, message: str) -> None:
    """Each bad option is refused with a message that names it."""
    with pytest.raises(ConfigurationError, match=message):
        open_store(f"memory://?{query}")


def test_replay_cache_0_is_no_cache(tmp_path: Path) -> None:
    """`replay_cache=0` opens the store itself, with its own options."""
    store = open_store(f"sqlite:///{tmp_path / 's.db'}?timeout=7&replay_cache=0")
    try:
        assert type(store).__name__ == "SQLiteStore"
    finally:
        store.close()


def test_the_backend_gets_its_own_options_untouched(tmp_path: Path) -> None:
    """The cache's options are taken out; the store's own stay."""
    store = open_store(f"sqlite:///{tmp_path / 's.db'}?timeout=7&replay_cache=3")
    try:
        assert isinstance(store, ReplayCache)
        assert type(store.store).__name__ == "SQLiteStore"
    finally:
        store.close()
    with pytest.raises(ConfigurationError, match="Unknown store URL option"):
        open_store(f"sqlite:///{tmp_path / 's.db'}?replay_cache=3&nonsense=1")


def test_b10_the_async_cache_answers_from_memory(url: str) -> None:
    """The async twin: the same answers from memory, on each backend."""

    async def run() -> int:
        store = open_async_store(with_cache(url))
        assert isinstance(store, AsyncReplayCache)
        await anyio.to_thread.run_sync(wait_listening, store)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(store.aclose)
            claim = await store.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION)
            await store.complete(IDENTITY, claim.record.token, b"o", retention=RETENTION)
            again = await store.claim(IDENTITY, "f", lease=LEASE, retention=RETENTION)
            assert not again.acquired
            assert again.record.outcome == b"o"
        return store.hits

    assert anyio.run(run) == 1


def test_b10_b13_the_middleware_replays_from_the_cache(url: str) -> None:
    """Through the ASGI middleware: the replay and the mismatch come from memory, with the
    same answers as from the store."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from retrysafe.asgi import IdempotencyMiddleware

    calls = []

    async def pay(request: Request) -> JSONResponse:
        calls.append(await request.body())
        return JSONResponse({"n": len(calls)}, status_code=201)

    async def run() -> list[tuple[int, str | None]]:
        store = open_async_store(with_cache(url))
        assert isinstance(store, AsyncReplayCache)
        await anyio.to_thread.run_sync(wait_listening, store)
        app = IdempotencyMiddleware(
            Starlette(routes=[Route("/pay", pay, methods=["POST"])]),
            store=store,
            scope_secret=b"replay-cache-test-secret",
        )
        headers = {"Idempotency-Key": '"k"', "Authorization": "Bearer c"}
        answers = []
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            for body in (b"{}", b"{}", b'{"other": 1}'):
                response = await client.post("/pay", content=body, headers=headers)
                answers.append((response.status_code, response.headers.get("idempotent-replayed")))
        hits = store.hits
        await store.aclose()
        assert hits == 2  # the replay and the mismatch
        return answers

    assert anyio.run(run) == [(201, None), (201, "true"), (422, None)]
    assert calls == [b"{}"]
