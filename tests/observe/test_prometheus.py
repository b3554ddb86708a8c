"""`PrometheusObserver` counts what each face did, against real stores: the numbers in a real
`CollectorRegistry` equal what happened, and no label names a key or a scope.

HTTP faces run on real servers: Starlette behind the ASGI middleware on uvicorn, Flask behind
the WSGI middleware on wsgiref. The decorator runs sync and async, and consumers take simple
message objects. A store is cut with a relay in front of real Redis or PostgreSQL (B20).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
import httpx
import pytest
from prometheus_client import CollectorRegistry

from retrysafe import (
    InFlightError,
    InvalidKeyError,
    KeyMismatchError,
    StoreUnavailableError,
    idempotent,
    open_async_store,
    open_store,
)
from retrysafe.asgi import IdempotencyMiddleware as AsgiMiddleware
from retrysafe.asgi import RouteSettings
from retrysafe.consumers import idempotent_message
from retrysafe.wsgi import IdempotencyMiddleware as WsgiMiddleware
from tests.conftest import fresh_store_url
from tests.integrations.servers import AsgiServer, WsgiServer
from tests.observe.metrics import (
    SCOPE_SECRET,
    Cuttable,
    Identities,
    Metrics,
    assert_no_identity_in_labels,
    cuttable_store,
    signal_waits,
)

BOUND: Final = 10.0
"""The bound on every wait for something to happen (a handler entered, a duplicate waiting)."""
CREDENTIAL: Final = "Bearer observed-caller"
ROUTES: Final = {
    "/required": RouteSettings(required=True),
    "/gate": RouteSettings(wait=0),
    "/gate-wait": RouteSettings(wait=BOUND),
}
"""`/required` needs a key (B6); duplicates of `/gate` are refused at once (B14), those of
`/gate-wait` wait for the first one (B15)."""
MAX_BODY: Final = 1024


def new_key() -> str:
    """Return a fresh Idempotency-Key, which no label value could contain by chance."""
    return str(uuid.uuid4())


@pytest.fixture
def metrics() -> Metrics:
    """A `PrometheusObserver` on a registry of this test's own."""
    return Metrics(CollectorRegistry())


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store on the backend the test is parametrized with (indirectly)."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        yield url


@pytest.fixture
def cuttable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cuttable]:
    """A fresh store on the real backend the test is parametrized with, behind a relay."""
    with cuttable_store(str(request.param), request, tmp_path) as store:
        yield store


@pytest.fixture
def anyio_backend() -> str:
    """The async tests run on asyncio, like the async stores' drivers."""
    return "asyncio"


# HTTP faces


@dataclass
class Handlers:
    """What the apps' handlers did, and the gate that holds `/gate` and `/gate-wait`."""

    calls: Counter[str] = field(default_factory=Counter)
    entered: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        """Count a call of `path`; return its number."""
        with self._lock:
            self.calls[path] += 1
            return self.calls[path]

    def hold(self, path: str) -> int:
        """Count a call, say it entered, and wait (bounded) until the gate opens."""
        number = self.count(path)
        self.entered.set()
        self.gate.wait(BOUND)
        return number


def starlette_app(handlers: Handlers) -> Any:
    """The ASGI app: 201 on `/charge` and `/required`, 500 on `/error`, held `/gate*`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    async def charge(request: Request) -> Response:
        await request.body()
        return JSONResponse({"n": handlers.count(request.url.path)}, status_code=201)

    async def error(request: Request) -> Response:
        handlers.count("/error")
        return PlainTextResponse("failed", status_code=500)

    async def gate(request: Request) -> Response:
        number = await anyio.to_thread.run_sync(handlers.hold, request.url.path)
        return JSONResponse({"n": number}, status_code=201)

    paths = {"/charge": charge, "/required": charge, "/error": error}
    routes = [Route(path, endpoint, methods=["POST"]) for path, endpoint in paths.items()]
    routes += [Route(path, gate, methods=["POST"]) for path in ("/gate", "/gate-wait")]
    return Starlette(routes=routes)


def flask_app(handlers: Handlers) -> Any:
    """The WSGI app: the same routes on Flask."""
    from flask import Flask, Response, request

    app = Flask(__name__)

    def created(number: int) -> Response:
        return Response(json.dumps({"n": number}), status=201, content_type="application/json")

    @app.post("/charge")
    @app.post("/required")
    def charge() -> Response:
        request.get_data()
        return created(handlers.count(request.path))

    @app.post("/error")
    def error() -> Response:
        handlers.count("/error")
        return Response("failed", status=500, content_type="text/plain")

    @app.post("/gate")
    @app.post("/gate-wait")
    def gate() -> Response:
        return created(handlers.hold(request.path))

    return app


@dataclass
class Service:
    """An app behind the middleware of one face, on a real server, observed."""

    face: str
    handlers: Handlers
    middleware: Any
    metrics: Metrics
    identities: Identities
    waiting: threading.Event
    client: httpx.Client

    def post(
        self, path: str, key: str | None = None, body: bytes = b"{}", *, anonymous: bool = False
    ) -> httpx.Response:
        """POST `body` to `path`, with `key` if given, as the caller unless `anonymous`."""
        headers = {} if key is None else {"Idempotency-Key": key}
        if not anonymous:
            headers["Authorization"] = CREDENTIAL
        return self.client.post(path, content=body, headers=headers)

    def decisions(self) -> dict[str, int]:
        """Return this face's requests by decision."""
        return self.metrics.decisions(self.face)

    def outcomes(self) -> dict[str, int]:
        """Return this face's outcomes by result."""
        return self.metrics.outcomes(self.face)

    def assert_no_identity_in_labels(self) -> None:
        """Assert that no label names a key, a scope or the credential."""
        assert_no_identity_in_labels(
            self.metrics.registry, self.identities, CREDENTIAL, CREDENTIAL.split()[1]
        )


@pytest.fixture
def serve(metrics: Metrics) -> Iterator[Callable[..., Service]]:
    """A factory: the `face` ("asgi" or "wsgi") app behind its middleware, its store opened
    from `url`, with `ROUTES`, a `MAX_BODY` limit, and the test's observers."""
    stops: list[Callable[[], None]] = []

    def start(face: str, url: str, **more: Any) -> Service:
        handlers, identities, waiting = Handlers(), Identities(), threading.Event()
        options: dict[str, Any] = {
            "routes": ROUTES,
            "max_body_size": MAX_BODY,
            "scope_secret": SCOPE_SECRET,
            "observers": [metrics.observer, identities],
            **more,
        }
        server: AsgiServer | WsgiServer
        if face == "asgi":
            astore = open_async_store(url)
            signal_waits(astore, waiting.set)
            middleware: Any = AsgiMiddleware(starlette_app(handlers), store=astore, **options)
            server = AsgiServer(middleware, on_close=astore.aclose)
            stops.append(server.stop)
        else:
            store = open_store(url)
            signal_waits(store, waiting.set)
            middleware = WsgiMiddleware(flask_app(handlers).wsgi_app, store=store, **options)
            server = WsgiServer(middleware)
            stops.extend((store.close, server.stop))  # run last first
        client = httpx.Client(base_url=server.url, timeout=BOUND + 5)
        stops.append(client.close)
        return Service(face, handlers, middleware, metrics, identities, waiting, client)

    yield start
    for stop in reversed(stops):
        stop()


FACE_BACKENDS = pytest.mark.parametrize(
    ("face", "store_url"),
    [
        pytest.param(face, backend, id=f"{face}-{backend}")
        for face in ("asgi", "wsgi")
        for backend in ("memory", "redis", "postgres")
    ],
    indirect=["store_url"],
)
"""Each HTTP face on each kind of store: memory (a product store) and real servers."""


@FACE_BACKENDS
def test_b10_b13_b18_executions_replays_mismatches_and_outcomes_are_counted(
    face: str, store_url: str, serve: Callable[[str, str], Service]
) -> None:
    """An execution, its replay, a mismatch and a 500 whose claim is released are each
    counted once under the face's name, with the store calls they made."""
    service = serve(face, store_url)
    key, failed = new_key(), new_key()
    assert service.post("/charge", key).status_code == 201
    replayed = service.post("/charge", key)
    assert replayed.status_code == 201
    assert replayed.headers["idempotent-replayed"] == "true"
    assert service.post("/charge", key, b'{"other": 1}').status_code == 422
    assert service.post("/error", failed).status_code == 500
    assert service.post("/charge").status_code == 201  # no key: not tracked, not counted

    assert service.handlers.calls == {"/charge": 2, "/error": 1}
    assert service.decisions() == {"execute": 2, "replay": 1, "mismatch": 1}
    assert service.outcomes() == {"stored": 1, "released": 1}
    assert service.metrics.faces() == {face: 4}
    assert service.metrics.store_calls() == {"claim": 4, "complete": 1, "release": 1}
    assert service.metrics.store_errors() == {}
    assert service.middleware.counters.executions == 2
    assert service.middleware.counters.replays == 1
    service.assert_no_identity_in_labels()


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b4_b6_b8_b22_refusals_before_the_claim_are_counted(
    face: str, serve: Callable[[str, str], Service]
) -> None:
    """An invalid key, a missing key where one is required, a keyed request with no caller to
    scope it to and a body over the limit are refused before any store call, and counted."""
    service = serve(face, "memory://")
    assert service.post("/charge", "k" * 256).status_code == 400  # over the 255 limit: invalid
    assert service.post("/required").status_code == 400  # key-required: rejected
    assert service.post("/charge", new_key(), anonymous=True).status_code == 400  # scope-missing
    assert service.post("/charge", new_key(), b"x" * (MAX_BODY + 1)).status_code == 413

    assert service.handlers.calls == {}
    assert service.decisions() == {"invalid": 1, "rejected": 2, "too_large": 1}
    assert service.outcomes() == {}
    assert service.metrics.store_calls() == {}
    service.identities.values.add("k" * 32)  # the invalid key's stem: in no label either
    service.assert_no_identity_in_labels()


@FACE_BACKENDS
def test_b14_b15_in_flight_and_waited_duplicates_are_counted(
    face: str, store_url: str, serve: Callable[[str, str], Service]
) -> None:
    """A duplicate of a held request is refused with 409 when it may not wait (in_flight);
    one that may wait is timed in the wait histogram, then replays."""
    service = serve(face, store_url)
    handlers = service.handlers
    with ThreadPoolExecutor(2) as pool:
        key = new_key()
        first = pool.submit(service.post, "/gate", key)
        assert handlers.entered.wait(BOUND)
        assert service.post("/gate", key).status_code == 409
        handlers.gate.set()
        assert first.result(BOUND).status_code == 201

        handlers.entered.clear()
        handlers.gate.clear()
        key = new_key()
        first = pool.submit(service.post, "/gate-wait", key)
        assert handlers.entered.wait(BOUND)
        duplicate = pool.submit(service.post, "/gate-wait", key)
        assert service.waiting.wait(BOUND)  # the duplicate is in the store's wait
        handlers.gate.set()
        assert first.result(BOUND).status_code == 201
        waited = duplicate.result(BOUND)
        assert waited.status_code == 201
        assert waited.headers["idempotent-replayed"] == "true"

    assert handlers.calls == {"/gate": 1, "/gate-wait": 1}
    assert service.decisions() == {"execute": 2, "in_flight": 1, "replay": 1}
    assert service.outcomes() == {"stored": 2}
    assert service.metrics.waits() == 1
    # Claims: two executions, the refused duplicate and the waited one (once: its wait ends
    # with the stored outcome, which it replays).
    assert service.metrics.store_calls() == {"claim": 4, "complete": 2}
    service.assert_no_identity_in_labels()


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b36_a_caller_over_its_in_flight_cap_is_counted_rejected(
    face: str, serve: Callable[..., Service]
) -> None:
    """A second key of a caller at its in-flight cap gets 429: counted `rejected` (not an
    execution), and its claim's release is no outcome."""
    service = serve(face, "memory://", max_in_flight_per_scope=1)
    handlers = service.handlers
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(service.post, "/gate", new_key())
        assert handlers.entered.wait(BOUND)
        assert service.post("/gate", new_key()).status_code == 429
        handlers.gate.set()
        assert first.result(BOUND).status_code == 201
    assert handlers.calls == {"/gate": 1}
    assert service.decisions() == {"execute": 1, "rejected": 1}
    assert service.outcomes() == {"stored": 1}


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
@pytest.mark.parametrize("cuttable", ["redis", "postgres"], indirect=True)
def test_b20_a_cut_store_is_counted_unavailable(
    face: str, cuttable: Cuttable, serve: Callable[[str, str], Service]
) -> None:
    """With the store cut, a keyed request gets 503 (fail closed) and is counted
    `unavailable`; the claim that raised is counted as a store error."""
    service = serve(face, cuttable.url)
    assert service.post("/charge", new_key()).status_code == 201
    cuttable.relay.cut()
    assert service.post("/charge", new_key()).status_code == 503

    assert service.handlers.calls == {"/charge": 1}
    assert service.decisions() == {"execute": 1, "unavailable": 1}
    assert service.outcomes() == {"stored": 1}
    assert service.metrics.store_errors() == {"claim": 1}
    service.assert_no_identity_in_labels()


# The decorator and consumers

SCOPE: Final = "tenant-observed-7"


@pytest.mark.parametrize("backend", ["memory", "redis", "postgres"])
def test_b26_b28_sync_decorator_counts_equal_what_happened(
    backend: str, metrics: Metrics, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A sync decorated function: executions, a replay, a mismatch, an invalid key, an
    exception that releases the key, a refused and a waited duplicate, each counted once."""
    identities, waiting = Identities(), threading.Event()
    observers = [metrics.observer, identities]
    entered, gate = threading.Event(), threading.Event()
    with fresh_store_url(backend, request, tmp_path) as url:
        store = open_store(url)
        signal_waits(store, waiting.set)
        try:

            @idempotent(store, key="order", scope=SCOPE, observers=observers)
            def pay(order: str, amount: int) -> int:
                return amount

            @idempotent(store, key="order", scope=SCOPE, observers=observers)
            def fail(order: str) -> None:
                raise RuntimeError("declined")

            def held(order: str) -> str:
                entered.set()
                gate.wait(BOUND)
                return order

            at_once = idempotent(store, key="order", scope=SCOPE, wait=0, observers=observers)
            waits = idempotent(store, key="order", scope=SCOPE, wait=BOUND, observers=observers)
            held_at_once, held_waiting = at_once(held), waits(held)

            key = new_key()
            assert pay(key, 5) == 5
            assert pay(key, 5) == 5
            with pytest.raises(KeyMismatchError):
                pay(key, 6)
            with pytest.raises(InvalidKeyError):
                pay("", 5)
            with pytest.raises(RuntimeError):
                fail(new_key())
            with ThreadPoolExecutor(2) as pool:
                key = new_key()
                first = pool.submit(held_at_once, key)
                assert entered.wait(BOUND)
                with pytest.raises(InFlightError):
                    held_at_once(key)
                gate.set()
                assert first.result(BOUND) == key

                entered.clear()
                gate.clear()
                key = new_key()
                first = pool.submit(held_waiting, key)
                assert entered.wait(BOUND)
                duplicate = pool.submit(held_waiting, key)
                assert waiting.wait(BOUND)
                gate.set()
                assert first.result(BOUND) == duplicate.result(BOUND) == key
        finally:
            store.close()

    assert metrics.decisions("decorator") == {
        "execute": 4,
        "replay": 2,
        "mismatch": 1,
        "invalid": 1,
        "in_flight": 1,
    }
    assert metrics.outcomes("decorator") == {"stored": 3, "released": 1}
    assert metrics.store_calls() == {"claim": 8, "complete": 3, "release": 1}  # no claim: ""
    assert metrics.waits() == 1
    assert_no_identity_in_labels(metrics.registry, identities, SCOPE)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["memory", "redis", "postgres"])
async def test_b26_b28_async_decorator_counts_equal_what_happened(
    backend: str, metrics: Metrics, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The same for an async decorated function with an async store."""
    identities, waiting = Identities(), anyio.Event()
    observers = [metrics.observer, identities]
    entered, gate = anyio.Event(), anyio.Event()
    with fresh_store_url(backend, request, tmp_path) as url:
        store = open_async_store(url)
        signal_waits(store, waiting.set)
        try:

            @idempotent(store, key="order", scope=SCOPE, observers=observers)
            async def pay(order: str, amount: int) -> int:
                return amount

            @idempotent(store, key="order", scope=SCOPE, observers=observers)
            async def fail(order: str) -> None:
                raise RuntimeError("declined")

            @idempotent(store, key="order", scope=SCOPE, wait=0, observers=observers)
            async def held_at_once(order: str) -> str:
                entered.set()
                await gate.wait()
                return order

            key = new_key()
            assert await pay(key, 5) == 5
            assert await pay(key, 5) == 5
            with pytest.raises(KeyMismatchError):
                await pay(key, 6)
            with pytest.raises(InvalidKeyError):
                await pay("", 5)
            with pytest.raises(RuntimeError):
                await fail(new_key())

            results: list[str] = []

            async def run(function: Callable[[str], Any], key: str) -> None:
                results.append(await function(key))

            with anyio.fail_after(BOUND):
                key = new_key()
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(run, held_at_once, key)
                    await entered.wait()
                    with pytest.raises(InFlightError):
                        await held_at_once(key)
                    gate.set()

                entered, gate = anyio.Event(), anyio.Event()

                @idempotent(store, key="order", scope=SCOPE, wait=BOUND, observers=observers)
                async def held_waiting(order: str) -> str:
                    entered.set()
                    await gate.wait()
                    return order

                key = new_key()
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(run, held_waiting, key)
                    await entered.wait()
                    tasks.start_soon(run, held_waiting, key)
                    await waiting.wait()
                    gate.set()
            assert len(results) == 3
        finally:
            await store.aclose()

    assert metrics.decisions("decorator") == {
        "execute": 4,
        "replay": 2,
        "mismatch": 1,
        "invalid": 1,
        "in_flight": 1,
    }
    assert metrics.outcomes("decorator") == {"stored": 3, "released": 1}
    assert metrics.store_calls() == {"claim": 8, "complete": 3, "release": 1}  # no claim: ""
    assert metrics.waits() == 1
    assert_no_identity_in_labels(metrics.registry, identities, SCOPE)


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_b20_decorator_with_a_cut_store_is_counted_unavailable(
    backend: str, metrics: Metrics, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """With the store cut, a decorated call raises without running and is counted
    `unavailable`, its failed claim a store error."""
    identities = Identities()
    runs: list[str] = []
    with cuttable_store(backend, request, tmp_path) as cuttable:
        store = open_store(cuttable.url)
        try:

            @idempotent(store, key="order", scope=SCOPE, observers=[metrics.observer, identities])
            def pay(order: str) -> str:
                runs.append(order)
                return order

            pay(new_key())
            cuttable.relay.cut()
            with pytest.raises(StoreUnavailableError):
                pay(new_key())
        finally:
            store.close()
    assert len(runs) == 1
    assert metrics.decisions("decorator") == {"execute": 1, "unavailable": 1}
    assert metrics.outcomes("decorator") == {"stored": 1}
    assert metrics.store_errors() == {"claim": 1}
    assert_no_identity_in_labels(metrics.registry, identities, SCOPE)


@dataclass(frozen=True)
class Message:
    """A delivered message, as a broker's client gives it: an id and a body."""

    message_id: str | None
    body: bytes


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_b26_consumer_counts_equal_what_happened(
    backend: str, metrics: Metrics, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A message handler: a delivery, its redelivery, a reused id with another body, a
    message without an id, a handler that fails and a duplicate delivery while the first
    runs are each counted once, under the face `consumer`."""
    identities = Identities()
    observers = [metrics.observer, identities]
    entered, gate = threading.Event(), threading.Event()
    effects: list[bytes] = []
    with fresh_store_url(backend, request, tmp_path) as url:
        store = open_store(url)
        try:

            @idempotent_message(store, namespace="orders.charge", observers=observers)
            def charge(message: Message) -> int:
                effects.append(message.body)
                return len(effects)

            @idempotent_message(store, namespace="orders.refund", observers=observers)
            def refund(message: Message) -> None:
                raise RuntimeError("refund failed")

            @idempotent_message(store, namespace="orders.ship", wait=0, observers=observers)
            def ship(message: Message) -> str:
                entered.set()
                gate.wait(BOUND)
                return "shipped"

            message = Message(new_key(), b'{"amount": 5}')
            assert charge(message) == charge(message) == 1
            with pytest.raises(KeyMismatchError):
                charge(Message(message.message_id, b'{"amount": 6}'))
            with pytest.raises(InvalidKeyError):
                charge(Message(None, b"{}"))
            with pytest.raises(RuntimeError):
                refund(Message(new_key(), b"{}"))
            parcel = Message(new_key(), b"{}")
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(ship, parcel)
                assert entered.wait(BOUND)
                with pytest.raises(InFlightError):
                    ship(parcel)
                gate.set()
                assert first.result(BOUND) == "shipped"
        finally:
            store.close()

    assert effects == [b'{"amount": 5}']
    assert metrics.faces() == {"consumer": 7}
    assert metrics.decisions("consumer") == {
        "execute": 3,
        "replay": 1,
        "mismatch": 1,
        "invalid": 1,
        "in_flight": 1,
    }
    assert metrics.outcomes("consumer") == {"stored": 2, "released": 1}
    assert metrics.store_calls() == {"claim": 6, "complete": 2, "release": 1}
    assert_no_identity_in_labels(metrics.registry, identities)


@pytest.mark.anyio
async def test_b26_async_consumer_counts_under_the_consumer_face(metrics: Metrics) -> None:
    """An async message handler with an async store is counted under `consumer` too."""
    identities = Identities()
    store = open_async_store("memory://")

    @idempotent_message(store, namespace="orders.async", observers=[metrics.observer, identities])
    async def charge(message: Message) -> str:
        return "charged"

    message = Message(new_key(), b"{}")
    assert await charge(message) == await charge(message) == "charged"
    await store.aclose()
    assert metrics.faces() == {"consumer": 2}
    assert metrics.decisions("consumer") == {"execute": 1, "replay": 1}
    assert metrics.outcomes("consumer") == {"stored": 1}
    assert_no_identity_in_labels(metrics.registry, identities)
