"""The hot path's shortcuts keep their guarantees: lazy heartbeat, hook hint, lock-free replays."""

from __future__ import annotations

import io
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from retrysafe import FencedError, Identity, ManualClock, State, StoreUnavailableError
from retrysafe._http import RouteSettings
from retrysafe._record import Record
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from retrysafe.stores.sqlite import AsyncSQLiteStore, SQLiteStore
from retrysafe.wsgi import IdempotencyMiddleware as WsgiMiddleware
from tests.http.conftest import CALLER, app_records


class CountingStore(AsyncMemoryStore):
    """The memory store, counting renewals; `renewed_twice` is set at the second."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0
        self.renewed_twice = anyio.Event()

    async def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Count, then renew."""
        self.renewals += 1
        if self.renewals == 2:
            self.renewed_twice.set()
        return await super().renew(identity, token, lease=lease)


def _scope(key: bytes | None) -> dict[str, Any]:
    headers = [(b"authorization", CALLER.encode())]
    if key is not None:
        headers.append((b"idempotency-key", key))
    return {"type": "http", "method": "POST", "path": "/x", "query_string": b"", "headers": headers}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _responder(sent: list[int]) -> Any:
    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    return send


def _app(seconds: float) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await anyio.sleep(seconds)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_b16_a_short_request_never_renews_and_a_long_one_does() -> None:
    """No renewal for a request shorter than a third of its lease; a slower one keeps it."""
    store = CountingStore()
    sent: list[int] = []

    async def main() -> None:
        quick = IdempotencyMiddleware(_app(0), store=store, lease=3)
        await quick(_scope(b"quick"), _receive, _responder(sent))
        assert store.renewals == 0
        slow = IdempotencyMiddleware(_app(0.5), store=store, lease=0.3)
        await slow(_scope(b"slow"), _receive, _responder(sent))
        assert store.renewals >= 2
        assert slow.counters.snapshot().get("fenced", 0) == 0
        assert "slow" in {r.identity.key for r in app_records(await store.list_records())}

    anyio.run(main)
    assert sent == [201, 201]


def test_b16_cancelled_while_renewing_stops_renewals_and_keeps_the_claim() -> None:
    """A request cancelled after renewals began keeps its claim (its outcome is unknown, B40)
    and stops renewing it, so its lease ends on time; no renewal follows the cancellation."""
    store = CountingStore()
    middleware = IdempotencyMiddleware(_app(60), store=store, lease=0.15)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(middleware, _scope(b"k"), _receive, _responder([]))
            with anyio.fail_after(5):
                await store.renewed_twice.wait()
            group.cancel_scope.cancel()
        (kept,) = app_records(await store.list_records())
        assert kept.state is State.IN_FLIGHT
        renewals = store.renewals
        await anyio.sleep(0.2)
        assert store.renewals == renewals

    anyio.run(main)
    assert middleware.counters.snapshot().get("fenced", 0) == 0


def test_b40_cancelled_before_its_first_renewal_never_renews() -> None:
    """A request cancelled before its first renewal is due keeps its claim, and no renewal
    starts later: its lease ends on time (the due renewal is forgotten, not only stopped)."""
    store = CountingStore()
    entered = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        entered.set()
        await anyio.sleep_forever()

    middleware = IdempotencyMiddleware(app, store=store, lease=0.3)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(middleware, _scope(b"k"), _receive, _responder([]))
            await entered.wait()
            group.cancel_scope.cancel()
        await anyio.sleep(0.3)  # three times the renewal interval (lease / 3)
        (kept,) = app_records(await store.list_records())
        assert kept.state is State.IN_FLIGHT

    anyio.run(main)
    assert store.renewals == 0
    assert middleware.counters.interrupted == 1


class Hook:
    """A route_settings hook that counts its calls and may say no route requires a key."""

    def __init__(self, may_require_key: bool | None) -> None:
        self.calls = 0
        if may_require_key is not None:
            self.may_require_key = may_require_key

    def __call__(self, scope: Any) -> RouteSettings | None:
        """Every route is covered, keys optional."""
        self.calls += 1
        return RouteSettings()


@pytest.mark.parametrize(("hint", "calls"), [(False, 0), (True, 1), (None, 1)])
def test_a_hook_saying_no_route_requires_a_key_is_not_asked_without_one(
    hint: bool | None, calls: int
) -> None:
    """With may_require_key=False a request without a key passes straight through."""
    hook = Hook(hint)
    sent: list[int] = []
    middleware = IdempotencyMiddleware(_app(0), store=AsyncMemoryStore(), route_settings=hook)
    anyio.run(middleware, _scope(None), _receive, _responder(sent))
    assert (hook.calls, sent) == (calls, [201])
    anyio.run(middleware, _scope(b"k"), _receive, _responder(sent))
    assert hook.calls == calls + 1


def test_b10_sqlite_replays_without_the_write_lock(tmp_path: Path) -> None:
    """A completed record answers a claim while another connection holds the write lock."""
    clock = ManualClock()
    path = tmp_path / "records.db"
    store = SQLiteStore(path, clock=clock, timeout=0.1)
    done = Identity("ns", "scope", "done")
    claim = store.claim(done, "fp", lease=30, retention=60)
    store.complete(done, claim.token, b"outcome", retention=60)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        replay = store.claim(done, "fp", lease=30, retention=60)
        assert (replay.acquired, replay.record.outcome) == (False, b"outcome")
        mismatch = store.claim(done, "other", lease=30, retention=60)
        assert (mismatch.acquired, mismatch.record.fingerprint) == (False, "fp")
        with pytest.raises(StoreUnavailableError):  # a new key needs the lock
            store.claim(Identity("ns", "scope", "new"), "fp", lease=30, retention=60)
        clock.advance(61)  # past retention, the done record is claimed afresh, under the lock
        with pytest.raises(StoreUnavailableError):
            store.claim(done, "fp", lease=30, retention=60)
        blocker.execute("ROLLBACK")
        fresh = store.claim(done, "fp", lease=30, retention=60)
        assert (fresh.acquired, fresh.taken_over) == (True, False)
    finally:
        blocker.close()
        store.close()


def test_b14_sqlite_parallel_claims_in_one_process_run_once(tmp_path: Path) -> None:
    """Many tasks claiming one new key through the async face: exactly one acquires it."""
    store = AsyncSQLiteStore(tmp_path / "records.db")
    identity = Identity("ns", "scope", "k")
    acquired: list[bool] = []

    async def claim() -> None:
        result = await store.claim(identity, "fp", lease=30, retention=60)
        acquired.append(result.acquired)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(16):
                group.start_soon(claim)
        await store.aclose()

    anyio.run(main)
    assert sorted(acquired) == [False] * 15 + [True]


def test_b17_sqlite_group_commit_keeps_each_write_atomic_and_its_error_its_own(
    tmp_path: Path,
) -> None:
    """Writes queued behind one commit each get their own result; a fenced one changes nothing."""
    store = SQLiteStore(tmp_path / "records.db", clock=ManualClock())
    held = store.claim(Identity("ns", "s", "held"), "fp", lease=30, retention=60)
    results: dict[str, object] = {}

    def write(name: str, call: Any) -> None:
        try:
            results[name] = call()
        except Exception as error:
            results[name] = error

    calls = {
        "fenced": lambda: store.complete(held.record.identity, "not-the-token", b"x", retention=60),
        "complete": lambda: store.complete(held.record.identity, held.token, b"ok", retention=60),
        **{
            f"claim{i}": lambda i=i: store.claim(
                Identity("ns", "s", f"k{i}"), "fp", lease=30, retention=60
            )
            for i in range(6)
        },
    }
    store._write_lock.acquire()
    threads = [threading.Thread(target=write, args=item) for item in calls.items()]
    for thread in threads:
        thread.start()
    while len(store._queue) < len(calls):
        time.sleep(0.001)
    store._write_lock.release()
    for thread in threads:
        thread.join(10)
    assert isinstance(results["fenced"], FencedError)
    assert isinstance(results["complete"], Record)
    assert results["complete"].outcome == b"ok"
    assert all(results[f"claim{i}"].acquired for i in range(6))  # type: ignore[attr-defined]
    assert store.stats().in_flight == 6
    done = store.get(held.record.identity)
    assert done is not None
    assert done.outcome == b"ok"
    store.close()


class CountingSyncStore(MemoryStore):
    """The sync memory store, counting renewals."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0

    def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Count, then renew."""
        self.renewals += 1
        return super().renew(identity, token, lease=lease)


def test_b16_wsgi_heartbeat_renews_only_a_slow_request_and_stops_with_it() -> None:
    """The shared WSGI heartbeat renews a request slower than a third of its lease, then stops."""
    store = CountingSyncStore()

    def app(seconds: float) -> Any:
        def wsgi(environ: Any, start_response: Any) -> list[bytes]:
            time.sleep(seconds)
            start_response("201 Created", [("Content-Type", "text/plain")])
            return [b"ok"]

        return wsgi

    def environ(key: str) -> dict[str, Any]:
        return {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/x",
            "HTTP_IDEMPOTENCY_KEY": key,
            "HTTP_AUTHORIZATION": CALLER,
            "CONTENT_LENGTH": "0",
            "wsgi.input": io.BytesIO(b""),
        }

    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return statuses.append

    quick = WsgiMiddleware(app(0), store=store, lease=3)
    assert b"".join(quick(environ("quick"), start_response)) == b"ok"
    assert store.renewals == 0
    slow = WsgiMiddleware(app(0.5), store=store, lease=0.3)
    assert b"".join(slow(environ("slow"), start_response)) == b"ok"
    assert store.renewals >= 2
    renewals = store.renewals
    time.sleep(0.3)
    assert store.renewals == renewals
    assert slow.counters.fenced == 0
    assert statuses == ["201 Created", "201 Created"]
