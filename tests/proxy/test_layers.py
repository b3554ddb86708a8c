"""`retrysafe proxy` in front of a service that uses retrysafe's middleware itself.

B18: the service's 409 `request-in-flight` (its key held by a request that reached it another
way) is not the key's outcome at the proxy: the proxy releases its claim, and the retry gets the
service's 201; the service's own 409 (`Retry-After` or not) is an outcome, stored. B39:
`--namespace` keeps two proxies on one store apart, and a proxy apart from the service it fronts
on the same store.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retrysafe import open_async_store
from retrysafe.asgi import IdempotencyMiddleware
from tests.integrations.servers import AsgiServer
from tests.proxy.conftest import Proxy

Start = Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]
_SECONDS = 10.0


class Service:
    """A retrysafe-protected service: `/orders` waits for `gate` and counts its runs."""

    def __init__(self, name: str, store_url: str) -> None:
        self.name = name
        self.calls = 0
        self.holds = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

        async def orders(request: Request) -> Response:
            self.calls += 1
            self.entered.set()
            await asyncio.to_thread(self.gate.wait, _SECONDS)
            return JSONResponse({"service": name, "n": self.calls}, status_code=201)

        async def holds(request: Request) -> Response:
            self.holds += 1
            body = {"status": "waitlisted"}
            return JSONResponse(body, status_code=409, headers={"Retry-After": "30"})

        routes = [
            Route("/orders", orders, methods=["POST"]),
            Route("/holds", holds, methods=["POST"]),
        ]
        app: Any = Starlette(routes=routes)
        store = open_async_store(store_url)
        middleware = IdempotencyMiddleware(app, store=store, namespace=name, wait=0)
        self.server = AsgiServer(middleware)
        self.url = self.server.url


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the services and the proxies of this module."""
    return f"sqlite:///{tmp_path_factory.mktemp('layers') / 'shared.db'}?timeout=30"


@pytest.fixture(scope="module")
def services(shared_store: str) -> Iterator[dict[str, Service]]:
    """Two services on the shared store, each its own middleware and namespace."""
    made = {name: Service(name, shared_store) for name in ("payments", "refunds")}
    yield made
    for service in made.values():
        service.gate.set()
        service.server.stop()


def _post(url: str, key: str, path: str = "/orders", **headers: str) -> httpx.Response:
    sent = {"Idempotency-Key": key, "Authorization": "Bearer layers", **headers}
    return httpx.post(f"{url}{path}", json={"x": 1}, headers=sent, timeout=30)


def test_b18_service_409_request_in_flight_is_released_by_the_proxy(
    services: dict[str, Service], proxies: Start, tmp_path: Path
) -> None:
    """The proxy (its own store) forwards while the service runs the key for a direct call:
    it passes the 409 on, keeps nothing, and the retry replays the service's 201."""
    service = services["payments"]
    (proxy,) = proxies([(["--upstream", service.url, "--store", "sqlite:///own.db"], tmp_path)])
    key = uuid.uuid4().hex
    service.gate.clear()
    service.entered.clear()
    answers: list[httpx.Response] = []
    direct = threading.Thread(target=lambda: answers.append(_post(service.url, key)))
    direct.start()
    try:
        assert service.entered.wait(_SECONDS)
        busy = _post(proxy.url, key)
        assert busy.status_code == 409
        assert busy.headers.get("idempotent-replayed") is None
    finally:
        service.gate.set()
        direct.join(_SECONDS)
    assert answers[0].status_code == 201
    retry = _post(proxy.url, key)
    assert retry.status_code == 201, retry.text
    assert retry.json() == answers[0].json()


def test_b18_service_own_409_with_retry_after_is_stored_by_the_proxy(
    services: dict[str, Service], proxies: Start, tmp_path: Path
) -> None:
    """The service answers a 409 of its own with `Retry-After` (a final answer: waitlisted):
    the proxy stores it, so the retry replays it and the service runs once."""
    service = services["refunds"]
    (proxy,) = proxies([(["--upstream", service.url, "--store", "sqlite:///own.db"], tmp_path)])
    key = uuid.uuid4().hex
    before = service.holds
    first = _post(proxy.url, key, "/holds")
    again = _post(proxy.url, key, "/holds")
    assert (first.status_code, again.status_code) == (409, 409)
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json() == {"status": "waitlisted"}
    assert service.holds - before == 1


def test_b39_proxies_on_one_store_with_their_own_namespaces_keep_apart(
    services: dict[str, Service], proxies: Start, shared_store: str, tmp_path: Path
) -> None:
    """Two proxies on one store, `--namespace` each, and the services behind them on that store
    too: one key runs once at each service, and never replays the other's response."""
    started = proxies(
        [
            (["--upstream", s.url, "--store", shared_store, "--namespace", f"edge-{s.name}"], None)
            for s in services.values()
        ]
    )
    key = uuid.uuid4().hex
    before = {name: s.calls for name, s in services.items()}
    for proxy, name in zip(started, services, strict=True):
        first = _post(proxy.url, key)
        assert first.status_code == 201, first.text
        assert first.json()["service"] == name
        again = _post(proxy.url, key)
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json() == first.json()
    assert {name: s.calls - before[name] for name, s in services.items()} == {
        "payments": 1,
        "refunds": 1,
    }
