"""End to end: the client faces through a lossy relay to the real ASGI middleware (B32-B33).

    client --> FaultRelay (loses responses after the server applied the request) --> uvicorn
           --> retrysafe.asgi.IdempotencyMiddleware (memory store) --> an app that counts

The app counts executions; the invariant is that every logical request runs exactly once and
gets exactly one successful answer, however many responses the relay loses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import requests

from retrysafe import open_async_store
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.client import (
    AsyncIdempotentTransport,
    IdempotentAdapter,
    IdempotentTransport,
    RetryPolicy,
    is_replay,
)
from retrysafe.demo._relay import FaultPlan, Relay, serve_asgi, serve_relay
from tests.client.conftest import Sleeps

LOGICAL_REQUESTS = 100
# The middleware scopes keys by caller (B8): every client here is one API client.
CALLER = {"Authorization": "Bearer client-test"}
# Twenty attempts make 0.3**20 the chance that one logical request loses every response.
POLICY = RetryPolicy(attempts=20, timeout=30.0, wait_initial=0.005, wait_max=0.02)


@dataclass
class PaymentsApp:
    """A tiny payments endpoint that counts how often it really ran."""

    executions: int = 0
    gate: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Create a payment: count the execution, answer 201 with its id."""
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.executions += 1
        number = self.executions
        if self.gate is not None:  # hold the request in flight until the test opens the gate
            self.entered.set()
            await anyio.to_thread.run_sync(self.gate.wait, 10.0)
        body = json.dumps({"id": number, **json.loads(b"".join(chunks))}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Service:
    """The counting app behind the middleware, served on a loopback port."""

    app: PaymentsApp
    url: str


@contextmanager
def serve(app: PaymentsApp, **settings: Any) -> Iterator[Service]:
    """Serve `app` behind the middleware with a fresh memory store."""
    store = open_async_store("memory://")
    wrapped = IdempotencyMiddleware(app, store=store, **settings)
    with serve_asgi(wrapped, lifespan="off") as url:
        yield Service(app, url)


@pytest.fixture
def service() -> Iterator[Service]:
    """The counting app behind the middleware with its default settings."""
    with serve(PaymentsApp()) as running:
        yield running


@pytest.fixture
def lossy(service: Service) -> Iterator[Relay]:
    """A relay in front of the service that loses 30% of the responses (seeded)."""
    with serve_relay(service.url, FaultPlan(loss=0.3, seed=2024)) as relay:
        yield relay


def payment(i: int) -> bytes:
    """The body of logical payment number `i`."""
    return json.dumps({"customer": f"c{i}", "amount": 100 + i, "currency": "EUR"}).encode()


def check(service: Service, relay: Relay, statuses: list[int], replays: int, ids: set[int]) -> None:
    """Exactly one execution and one success per logical request, despite the losses."""
    assert statuses == [201] * LOGICAL_REQUESTS
    assert service.app.executions == LOGICAL_REQUESTS
    assert len(ids) == LOGICAL_REQUESTS
    assert relay.counters.lost >= 10
    assert relay.counters.forwarded == LOGICAL_REQUESTS + relay.counters.lost
    # Every lost response was retried; the retry found the stored outcome and replayed it.
    assert replays >= 1


def test_b32_b33_sync_transport_exactly_once_through_lost_responses(
    service: Service, lossy: Relay
) -> None:
    """100 POSTs through 30% lost responses: 100 executions, 100 answers (sync httpx)."""
    statuses, ids, replays = [], set(), 0
    attempts: list[int] = []
    transport = IdempotentTransport(policy=POLICY)
    with httpx.Client(transport=transport, base_url=lossy.url, headers=CALLER) as client:
        for i in range(LOGICAL_REQUESTS):
            response = client.post("/payments", content=payment(i))
            statuses.append(response.status_code)
            ids.add(response.json()["id"])
            replays += response.extensions["idempotent_replayed"]
            attempts.append(response.extensions["retrysafe_attempts"])
            # Only a lost response causes a retry, and the retry always finds the stored outcome.
            assert response.extensions["idempotent_replayed"] == (attempts[-1] > 1)
    check(service, lossy, statuses, replays, ids)
    assert sum(attempts) == lossy.counters.received


@pytest.mark.anyio
async def test_b32_b33_async_transport_exactly_once_through_lost_responses(
    service: Service, lossy: Relay
) -> None:
    """100 POSTs, ten at a time, through 30% lost responses: 100 executions (async httpx)."""
    statuses, ids, replays = [], set(), 0
    attempts: list[int] = []
    limit = anyio.Semaphore(10)

    async def pay(client: httpx.AsyncClient, i: int) -> None:
        nonlocal replays
        async with limit:
            response = await client.post("/payments", content=payment(i))
        statuses.append(response.status_code)
        ids.add(response.json()["id"])
        replays += response.extensions["idempotent_replayed"]
        attempts.append(response.extensions["retrysafe_attempts"])

    transport = AsyncIdempotentTransport(policy=POLICY)
    async with (
        httpx.AsyncClient(transport=transport, base_url=lossy.url, headers=CALLER) as client,
        anyio.create_task_group() as tasks,
    ):
        for i in range(LOGICAL_REQUESTS):
            tasks.start_soon(pay, client, i)
    check(service, lossy, statuses, replays, ids)
    assert sum(attempts) == lossy.counters.received


def test_b32_b33_requests_adapter_exactly_once_through_lost_responses(
    service: Service, lossy: Relay
) -> None:
    """100 POSTs through 30% lost responses: 100 executions, 100 answers (requests)."""
    statuses, ids, replays = [], set(), 0
    with requests.Session() as session:
        session.mount("http://", IdempotentAdapter(policy=POLICY))
        session.headers.update(CALLER)
        for i in range(LOGICAL_REQUESTS):
            response = session.post(f"{lossy.url}/payments", data=payment(i), timeout=10)
            statuses.append(response.status_code)
            ids.add(response.json()["id"])
            replays += is_replay(response)
    check(service, lossy, statuses, replays, ids)


def test_b32_without_the_transport_lost_responses_make_duplicates_or_errors(
    service: Service, lossy: Relay
) -> None:
    """The control run: a naive retry loop without keys executes some payments twice."""
    with httpx.Client(base_url=lossy.url, transport=httpx.HTTPTransport(retries=0)) as client:
        for i in range(LOGICAL_REQUESTS):
            for _ in range(20):
                try:
                    client.post("/payments", content=payment(i))
                    break
                except httpx.TransportError:
                    continue
    assert service.app.executions == LOGICAL_REQUESTS + lossy.counters.lost
    assert service.app.executions > LOGICAL_REQUESTS


def test_b33_in_flight_409_is_retried_after_retry_after_and_replayed(sleeps: Sleeps) -> None:
    """A duplicate of a running request gets 409 + Retry-After, waits that long, then the replay."""
    app = PaymentsApp(gate=threading.Event())
    with serve(app, wait=0) as service:
        first: list[httpx.Response] = []
        opener = threading.Thread(
            target=lambda: first.append(
                httpx.post(
                    f"{service.url}/payments",
                    content=payment(1),
                    headers={"Idempotency-Key": '"same"', **CALLER},
                    timeout=10,
                )
            )
        )
        opener.start()
        assert app.entered.wait(10)

        def sleep(seconds: float) -> None:
            # The duplicate waits: let the first request finish meanwhile.
            sleeps(seconds)
            assert app.gate is not None
            app.gate.set()
            opener.join(10)

        transport = IdempotentTransport(policy=POLICY, sleep=sleep, clock=sleeps.clock)
        with httpx.Client(transport=transport, headers=CALLER) as client:
            second = client.post(
                f"{service.url}/payments",
                content=payment(1),
                headers={"Idempotency-Key": '"same"'},
            )
        assert sleeps.delays == [1.0]  # the middleware's Retry-After for a request in flight
        assert first[0].status_code == second.status_code == 201
        assert second.extensions["idempotent_replayed"] is True
        assert second.json() == first[0].json()
        assert app.executions == 1


def test_b33_key_reused_with_another_body_gets_422_once(service: Service, sleeps: Sleeps) -> None:
    """The middleware's 422 for a key reused with another body is final: no retry, no wait."""
    transport = IdempotentTransport(policy=POLICY, sleep=sleeps, clock=sleeps.clock)
    with httpx.Client(transport=transport, base_url=service.url, headers=CALLER) as client:
        headers = {"Idempotency-Key": '"reused"'}
        assert client.post("/payments", content=payment(1), headers=headers).status_code == 201
        again = client.post("/payments", content=payment(2), headers=headers)
    assert again.status_code == 422
    assert again.headers["content-type"].startswith("application/problem+json")
    assert again.extensions["retrysafe_attempts"] == 1
    assert sleeps.delays == []
    assert service.app.executions == 1
