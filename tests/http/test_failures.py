"""Outcome policy, storage failures and unavailable stores: B18-B20, and cancellation."""

from __future__ import annotations

import asyncio
import io
import logging
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

from retrysafe import ManualClock, State
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from retrysafe.wsgi import IdempotencyMiddleware as WsgiMiddleware
from tests.conftest import fresh_store_url
from tests.http.apps import Recorder
from tests.http.conftest import (
    ASGI_FACES,
    CALLER,
    Service,
    app_records,
    is_problem,
    wait_until,
)

Serve = Callable[..., Service]


@pytest.mark.parametrize("status", [500, 503, 408, 429, 307, 308])
def test_b18_5xx_408_429_307_and_308_release_the_claim(serve: Serve, status: int) -> None:
    """A 5xx, 408 or 429 is not stored: the retry runs the handler again. Nor is a 307 or 308,
    which asks for the same request at another URI (a router's trailing-slash redirect)."""
    service = serve()
    assert service.post(f"/status/{status}", "k").status_code == status
    again = service.post(f"/status/{status}", "k")
    assert again.status_code == status
    assert "idempotent-replayed" not in again.headers
    assert service.recorder.calls["/status"] == 2
    assert service.records() == []


def test_b18_an_exception_releases_the_claim(serve: Serve) -> None:
    """A handler that raises leaves no record: the retry runs again."""
    service = serve()
    assert service.post("/fail", "k").status_code == 500
    assert service.post("/fail", "k").status_code == 500
    assert service.recorder.calls["/fail"] == 2
    assert service.records() == []


@pytest.mark.parametrize("status", [200, 201, 204, 301, 302, 303, 400, 404, 409, 422])
def test_b18_definitive_outcomes_are_stored(serve: Serve, status: int) -> None:
    """2xx, 3xx other than 307 and 308, and 4xx other than 408 and 429 are stored and
    replayed."""
    service = serve()
    first = service.post(f"/status/{status}", "k")
    again = service.post(f"/status/{status}", "k")
    assert first.status_code == again.status_code == status
    assert again.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/status"] == 1


def test_b10_a_replayed_204_has_no_content_length(serve: Serve) -> None:
    """A 204 is replayed as it was sent: no body, and no Content-Length, which a 204 must not
    carry (RFC 9110, section 8.6)."""
    service = serve()
    first = service.post("/status/204", "k")
    again = service.post("/status/204", "k")
    assert first.status_code == again.status_code == 204
    assert again.headers["idempotent-replayed"] == "true"
    assert "content-length" not in first.headers
    assert "content-length" not in again.headers
    assert again.content == b""


def test_b18_store_everything_mode_stores_5xx(serve: Serve) -> None:
    """With outcomes="all" a 500 is stored and replayed (Stripe v1)."""
    service = serve(outcomes="all")
    service.post("/status/500", "k")
    again = service.post("/status/500", "k")
    assert again.status_code == 500
    assert again.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/status"] == 1


def test_b18_outcome_policy_can_be_a_function(serve: Serve) -> None:
    """A predicate decides which statuses are stored."""
    service = serve(outcomes=lambda status: status == 202)
    service.post("/status/202", "a")
    service.post("/status/201", "b")
    assert service.post("/status/202", "a").headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in service.post("/status/201", "b").headers


def test_b19_storing_fails_after_the_handler_ran(
    serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """complete fails: the client still gets the response, the failure is logged and
    counted, the outcome is held and replayed, and a retry stores it once the store is back."""
    path = tmp_path / "locked.db"
    service = serve(store_url=f"sqlite:///{path}?timeout=0.2", wait=0)
    caplog.set_level(logging.ERROR, logger="retrysafe.http")
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(service.post, "/gate", "k")
        assert service.recorder.entered.wait(10)
        lock = sqlite3.connect(path, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # the store cannot write until we let go
            service.recorder.gate.set()
            response = first.result(15)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    assert response.status_code == 201
    assert response.json() == {"n": 1}
    assert service.middleware.counters.complete_failures >= 1
    assert any("Cannot store the outcome" in r.getMessage() for r in caplog.records)
    again = service.post("/gate", "k")  # from the held outcome, or the store if it landed
    assert (again.status_code, again.json()) == (201, {"n": 1})
    assert again.headers["idempotent-replayed"] == "true"
    wait_until(lambda: [r.state for r in service.records()] == [State.DONE])
    assert service.recorder.calls["/gate"] == 1


DEAD_STORES = [
    pytest.param("redis://127.0.0.1:1/0?prefix=rs_dead&connect_timeout=0.5", id="redis"),
    pytest.param(
        "postgresql://postgres@127.0.0.1:1/test?table=rs_dead&connect_timeout=1&pool_timeout=0.3",
        id="postgres",
    ),
    pytest.param(
        "mysql://root@127.0.0.1:1/test?table=rs_dead&connect_timeout=1&pool_timeout=0.3",
        id="mysql",
    ),
]


@pytest.mark.parametrize("store_url", DEAD_STORES)
def test_b20_unavailable_store_fails_closed_with_503(serve: Serve, store_url: str) -> None:
    """A store that cannot be reached: 503 problem+json with Retry-After; handler not run."""
    service = serve(store_url=store_url)
    response = service.post("/payments", "k", json={"amount": 1})
    assert is_problem(response, 503, "store-unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert service.recorder.calls["/payments"] == 0


@pytest.mark.parametrize("store_url", DEAD_STORES)
def test_b20_fail_open_runs_the_handler_untracked(serve: Serve, store_url: str) -> None:
    """With fail_open the handler runs without the guarantee: twice for two requests."""
    service = serve(store_url=store_url, fail_open=True)
    for _ in range(2):
        response = service.post("/payments", "k", json={"amount": 1})
        assert response.status_code == 201
        assert "idempotent-replayed" not in response.headers
    assert service.recorder.calls["/payments"] == 2


def test_b20_requests_without_a_key_never_touch_the_store(serve: Serve) -> None:
    """A dead store does not affect requests the middleware does not track."""
    service = serve(store_url="redis://127.0.0.1:1/0?prefix=rs_dead&connect_timeout=0.5")
    assert service.post("/payments", json={}).status_code == 201
    assert service.client.get("/payments").status_code == 200


def test_b40_a_request_cancelled_mid_handler_keeps_its_claim_until_its_lease_ends() -> None:
    """A request cancelled while its handler runs (a server past its graceful shutdown, a
    timeout around the app) has an unknown outcome: its claim is kept, not released, and counted
    as interrupted; a retry is refused as in flight until the lease ends, then runs."""
    clock = ManualClock()
    store = AsyncMemoryStore(clock=clock)
    entered = anyio.Event()
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        entered.set()
        if len(runs) == 1:
            await anyio.sleep_forever()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"charged"})

    middleware = IdempotencyMiddleware(app, store=store, wait=0)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k"), (b"authorization", CALLER.encode())],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def status() -> int:
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)

        await middleware(scope, receive, send)
        return int(sent[0]["status"])

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(status)
            await entered.wait()
            group.cancel_scope.cancel()
        (record,) = app_records(await store.list_records())
        assert record.state is State.IN_FLIGHT
        assert await status() == 409
        clock.advance(31)  # the lease (30 s) has ended: a retry takes the key over
        assert await status() == 201

    anyio.run(main)
    assert runs == [1, 1]
    assert middleware.counters.interrupted == 1


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_b40_a_wsgi_request_interrupted_mid_handler_keeps_its_claim(
    interrupt: type[BaseException],
) -> None:
    """Under WSGI, an interruption raised in the app (Ctrl+C, a worker's `SystemExit`) leaves
    its outcome unknown: the claim is kept until its lease ends; an exception releases it."""
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    runs: list[int] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        runs.append(1)
        if len(runs) == 1:
            raise interrupt
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"charged"]

    middleware = WsgiMiddleware(app, store=store, wait=0)
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/x",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": "0",
        "HTTP_IDEMPOTENCY_KEY": "k",
        "HTTP_AUTHORIZATION": CALLER,
        "wsgi.input": io.BytesIO(b""),
    }

    def status() -> str:
        started: list[str] = []
        body = middleware(dict(environ), lambda line, headers, *_: started.append(line))
        b"".join(body)
        return started[0]

    with pytest.raises(interrupt):
        status()
    (record,) = app_records(store.list_records())
    assert record.state is State.IN_FLIGHT
    assert status().startswith("409")
    clock.advance(31)
    assert status().startswith("201")
    assert runs == [1, 1]
    assert middleware.counters.interrupted == 1


class _TimingOut:
    """A timeout layer outside an ASGI app, as apps put one outside their stack: the app runs
    under `asyncio.timeout`, and a request that times out is answered 504. Its timeout fires as
    soon as the `/gate` handler runs (its deadline moved to now), not after a time."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.recorder: Recorder | None = None  # the service's, set once it has started

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        recorder = self.recorder
        if scope["type"] != "http" or recorder is None:
            await self.app(scope, receive, send)
            return
        calls = recorder.calls["/gate"]

        async def time_out_once_the_handler_runs() -> None:
            while recorder.calls["/gate"] == calls:  # noqa: ASYNC110 - a thread-safe count
                await asyncio.sleep(0.005)
            timeout.reschedule(asyncio.get_running_loop().time())

        watcher = None
        try:
            async with asyncio.timeout(10) as timeout:
                watcher = asyncio.create_task(time_out_once_the_handler_runs())
                await self.app(scope, receive, send)
        except TimeoutError:
            await send({"type": "http.response.start", "status": 504, "headers": []})
            await send({"type": "http.response.body", "body": b"timed out"})
        finally:
            if watcher is not None:
                watcher.cancel()


@pytest.fixture(params=["memory", "sqlite", "postgres", "mysql", "redis", "redis-cluster"])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh store on each backend, the memory store's too."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        yield url


@pytest.mark.parametrize("face", ASGI_FACES)
def test_b40_a_timeout_outside_the_middleware_does_not_let_a_retry_run_at_once(
    start_service: Callable[..., Service], face: str, any_store_url: str
) -> None:
    """A timeout layer outside the middleware cancels a slow handler and answers 504; the
    client retries at once. The handler may have made its effect, so the retry is refused as
    in flight (409) until the cancelled request's lease ends; after it, a retry runs. Before,
    the cancellation released the claim and the retry ran the handler a second time."""
    clock = ManualClock()
    layers: list[_TimingOut] = []

    def wrap(app: Any) -> _TimingOut:
        layers.append(_TimingOut(app))
        return layers[-1]

    service = start_service(face, store_url=any_store_url, clock=clock, wait=0, wrap=wrap)
    layers[0].recorder = service.recorder
    assert service.post("/gate", "k").status_code == 504
    assert is_problem(service.post("/gate", "k"), 409, "request-in-flight")
    assert service.recorder.calls["/gate"] == 1
    assert service.middleware.counters.interrupted == 1
    clock.advance(31)  # the lease (30 s) has ended: a retry takes the key over
    service.recorder.gate.set()
    layers[0].recorder = None  # no timeout now
    assert service.post("/gate", "k").status_code == 201
    assert service.recorder.calls["/gate"] == 2
    replay = service.post("/gate", "k")
    assert replay.headers["idempotent-replayed"] == "true"
