"""Outcome policy, storage failures and unavailable stores: B18-B20, and cancellation."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

from retrysafe import State
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.stores.memory import AsyncMemoryStore
from tests.http.conftest import CALLER, Service, app_records, is_problem, wait_until

Serve = Callable[..., Service]


@pytest.mark.parametrize("status", [500, 503, 408, 429])
def test_b18_5xx_408_and_429_release_the_claim(serve: Serve, status: int) -> None:
    """A 5xx, 408 or 429 is not stored: the retry runs the handler again."""
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


@pytest.mark.parametrize("status", [200, 201, 303, 400, 404, 409, 422])
def test_b18_definitive_outcomes_are_stored(serve: Serve, status: int) -> None:
    """2xx, 3xx and 4xx other than 408 and 429 are stored and replayed."""
    service = serve()
    first = service.post(f"/status/{status}", "k")
    again = service.post(f"/status/{status}", "k")
    assert first.status_code == again.status_code == status
    assert again.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/status"] == 1


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


def test_cancellation_while_the_handler_runs_releases_the_claim() -> None:
    """A request cancelled mid-handler (shutdown, disconnect) releases its claim."""
    store = AsyncMemoryStore()
    entered = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        entered.set()
        await anyio.sleep_forever()

    middleware = IdempotencyMiddleware(app, store=store)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k"), (b"authorization", CALLER.encode())],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(middleware, scope, receive, send)
            await entered.wait()
            assert len(app_records(await store.list_records())) == 1
            group.cancel_scope.cancel()
        assert app_records(await store.list_records()) == []

    anyio.run(main)
