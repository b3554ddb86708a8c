"""The demo run: the same payments through a faulty hop, without keys and then with them.

    client (retrying) ──▶ fault relay ──▶ demo payments API ──▶ payments table
                          loses 30% of responses after the API applied the request,
                          delays some past the client's timeout

Both passes use the same retrying client (`retrysafe.client.AsyncIdempotentTransport`) and the
same seeded plan: the same payments, the same ones sent twice at once, the same fault draws.
In the pass without keys, a hop under the client removes the Idempotency-Key header before
the request leaves, so the client retries exactly as before but the API cannot tell a retry
from a new payment.

The figures are honest: charges are counted in the API's own payments table after the API
has stopped (so no late request is missed), replays and 409s from what the API answered,
lost responses from the relay, retries from the client.
"""

from __future__ import annotations

import functools
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from retrysafe._record import Identity
from retrysafe._urls import redact_url
from retrysafe.client import AsyncIdempotentTransport, RetryEvent, RetryPolicy
from retrysafe.demo._app import DemoApp, create_app
from retrysafe.demo._relay import FaultPlan, serve_asgi, serve_relay
from retrysafe.demo._report import DemoReport, RunResult
from retrysafe.demo._schema import DEFAULT_PREFIX
from retrysafe.demo._tables import DemoDatabase
from retrysafe.stores import open_async_store, open_store

__all__ = ["DemoSettings", "ProgressHook", "check_store", "run_demo"]

ProgressHook = Callable[[bool, int], None]
"""Told (keys, payments finished so far) as a pass progresses."""

_CURRENCIES = ("EUR", "USD", "GBP")
_KEY_HEADER = "Idempotency-Key"


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """How a demo run is shaped.

    Attributes:
        requests: the logical payments per pass.
        loss: the share of responses the relay loses after the API applied the request.
        store: the store URL (and the demo tables' database); None: a fresh SQLite file in a
            temporary directory, removed afterwards.
        seed: the seed of the payments, the duplicates, the faults and the client's jitter.
        latency: seconds each payment spends at the simulated payment processor.
        duplicates: the share of payments the client sends twice at once (a double click).
        delay: the share of delivered responses the relay delays.
        delay_seconds: the longest delay; those past `read_timeout` become client timeouts.
        read_timeout: the client's read timeout per attempt.
        concurrency: the payments in progress at once.
        table_prefix: the demo tables' name prefix (tests use unique ones).
    """

    requests: int = 200
    loss: float = 0.3
    store: str | None = None
    seed: int = 0
    latency: float = 0.01
    duplicates: float = 0.1
    delay: float = 0.1
    delay_seconds: float = 1.5
    read_timeout: float = 1.0
    concurrency: int = 16
    table_prefix: str = DEFAULT_PREFIX


@dataclass(frozen=True, slots=True)
class _Payment:
    customer: str
    amount: int
    currency: str
    twice: bool


@dataclass
class _PassCounts:
    retries: int = 0
    finished: int = 0


@dataclass(frozen=True, slots=True)
class _Pass:
    counts: _PassCounts
    lost: int
    seconds: float


def check_store(url: str) -> None:
    """Read from the store at `url` once, so an unreachable store fails before anything starts.

    Raises:
        ConfigurationError: the URL is invalid.
        StoreUnavailableError: the store cannot be reached.
    """
    store = open_store(url)
    try:
        store.get(Identity("retrysafe-check", "", "reachable"))
    finally:
        store.close()


def run_demo(settings: DemoSettings, on_progress: ProgressHook | None = None) -> DemoReport:
    """Run both passes and return what happened, counted from the API's own records.

    Blocks until done; the API and the relays run in background threads on loopback ports.
    """
    with _store_url(settings.store) as store_url:
        check_store(store_url)
        database = DemoDatabase.for_store_url(store_url, prefix=settings.table_prefix)
        try:
            return _run(settings, store_url, database, on_progress or _quiet)
        finally:
            database.close()


def _run(
    settings: DemoSettings, store_url: str, database: DemoDatabase, on_progress: ProgressHook
) -> DemoReport:
    run_id = uuid.uuid4().hex[:8]  # tenants of earlier runs in the same database stay apart
    plan = _plan(settings)
    tenants = {
        keys: f"demo-{run_id}-{'with' if keys else 'without'}-keys" for keys in (False, True)
    }
    api = create_app(database, store=open_async_store(store_url), latency=settings.latency)
    passes: dict[bool, _Pass] = {}
    with serve_asgi(api, lifespan="on") as api_url:
        for keys in (False, True):
            faults = FaultPlan(
                loss=settings.loss,
                delay=settings.delay,
                delay_seconds=settings.delay_seconds,
                seed=settings.seed,
            )
            with serve_relay(api_url, faults) as relay:
                started = time.monotonic()
                counts = anyio.run(
                    functools.partial(
                        _send_all,
                        settings=settings,
                        plan=plan,
                        url=relay.url,
                        tenant=tenants[keys],
                        keys=keys,
                        on_progress=on_progress,
                    )
                )
                seconds = time.monotonic() - started
            passes[keys] = _Pass(counts, relay.counters.lost, seconds)
    # The API has stopped and finished every request it received: the table is final.
    results = {
        keys: _result(api=api, tenant=tenants[keys], keys=keys, plan=plan, run=passes[keys])
        for keys in passes
    }
    return DemoReport(
        requests=settings.requests,
        loss=settings.loss,
        seed=settings.seed,
        store=redact_url(store_url) if settings.store else "a fresh SQLite file",
        without_keys=results[False],
        with_keys=results[True],
    )


def _result(
    *, api: DemoApp, tenant: str, keys: bool, plan: list[_Payment], run: _Pass
) -> RunResult:
    charged = api.database.charges_by_customer(tenant)
    traffic = api.traffic.of(tenant)
    return RunResult(
        keys=keys,
        tenant=tenant,
        intended=len(plan),
        charges=sum(charged.values()),
        duplicate_charges=sum(count - 1 for count in charged.values() if count > 1),
        uncharged=sum(1 for payment in plan if payment.customer not in charged),
        replays=traffic.replays,
        conflicts=traffic.conflicts,
        retries=run.counts.retries,
        lost_responses=run.lost,
        concurrent_duplicates=sum(payment.twice for payment in plan),
        seconds=run.seconds,
    )


def _plan(settings: DemoSettings) -> list[_Payment]:
    """The payments both passes make: one customer each, so the table shows every duplicate."""
    rng = random.Random(settings.seed)  # noqa: S311 -- a workload, not a secret
    return [
        _Payment(
            customer=f"customer-{number:05d}",
            amount=rng.randrange(100, 100_000),
            currency=rng.choice(_CURRENCIES),
            twice=rng.random() < settings.duplicates,
        )
        for number in range(1, settings.requests + 1)
    ]


async def _send_all(
    *,
    settings: DemoSettings,
    plan: list[_Payment],
    url: str,
    tenant: str,
    keys: bool,
    on_progress: ProgressHook,
) -> _PassCounts:
    counts = _PassCounts()

    def count_retry(event: RetryEvent) -> None:
        counts.retries += 1

    wire: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=settings.concurrency * 2)
    )
    transport = AsyncIdempotentTransport(
        wire if keys else _WithoutKeys(wire),
        policy=RetryPolicy(attempts=10, timeout=60.0, wait_initial=0.05, wait_max=1.0),
        on_retry=[count_retry],
        rng=random.Random(settings.seed),  # noqa: S311 -- jitter, not a secret
    )
    limiter = anyio.Semaphore(settings.concurrency)
    client = httpx.AsyncClient(
        base_url=url,
        transport=transport,
        headers={"Authorization": f"Bearer {tenant}"},
        timeout=httpx.Timeout(10.0, read=settings.read_timeout),
        trust_env=False,
    )

    async def pay(payment: _Payment) -> None:
        body = {
            "customer": payment.customer,
            "amount": payment.amount,
            "currency": payment.currency,
        }
        async with limiter:
            if payment.twice:
                # A double click: the same operation, so the same key, sent twice at once.
                headers = {_KEY_HEADER: f'"{uuid.uuid4()}"'}
                async with anyio.create_task_group() as group:
                    group.start_soon(_post, client, body, headers)
                    group.start_soon(_post, client, body, headers)
            else:
                await _post(client, body, {})  # the client attaches a key of its own
        counts.finished += 1
        on_progress(keys, counts.finished)

    async with client, anyio.create_task_group() as group:
        for payment in plan:
            group.start_soon(pay, payment)
    return counts


async def _post(
    client: httpx.AsyncClient, body: dict[str, object], headers: dict[str, str]
) -> None:
    try:
        response = await client.post("/payments", json=body, headers=headers)
        await response.aclose()
    except httpx.HTTPError:
        pass  # the client gave up; the payments table tells whether it was charged


class _WithoutKeys(httpx.AsyncBaseTransport):
    """Remove the Idempotency-Key header on the way out: a retrying client without keys."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` without its key."""
        request.headers.pop(_KEY_HEADER, None)
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()


@contextmanager
def _store_url(store: str | None) -> Iterator[str]:
    if store is not None:
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="retrysafe-demo-") as directory:
        yield f"sqlite:///{Path(directory) / 'demo.db'}"


def _quiet(keys: bool, finished: int) -> None:
    pass
