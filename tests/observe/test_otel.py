"""The OpenTelemetry observer through the real faces: spans nest where a trace reader expects.

Each test has its own SDK `TracerProvider` exporting to memory (the global provider is never
set); the observer is given it. A server span is started by a test middleware around the
retrysafe middleware, the way an ASGI or WSGI server's instrumentation does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.test import Client

from retrysafe import (
    AsyncStore,
    Identity,
    Record,
    RecordUnreadableError,
    StoreUnavailableError,
    open_async_store,
    open_store,
)
from retrysafe._decorator import idempotent
from retrysafe.asgi import IdempotencyMiddleware as AsgiMiddleware
from retrysafe.observe import Attempt, Operation, StoreCall
from retrysafe.observe.otel import OpenTelemetryObserver
from retrysafe.stores.encrypted import Keyring
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from retrysafe.wsgi import IdempotencyMiddleware as WsgiMiddleware
from tests.conftest import fresh_store_url
from tests.flow.conftest import wait_until

CALLER = "Bearer test-caller"
SECRET = "s" * 32
EXECUTED = ["retrysafe.store.claim", "retrysafe.store.complete"]
"""The store spans of an executed operation: its claim, then its outcome stored."""
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class Traces:
    """An SDK tracer provider exporting to memory, the observer on it, and a test tracer."""

    def __init__(self, **options: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.observer = OpenTelemetryObserver(self.provider, **options)
        self.tracer: Tracer = self.provider.get_tracer("tests")

    def spans(self, name: str) -> list[ReadableSpan]:
        """Return the finished spans called `name`, in the order they ended."""
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        """Return the only finished span called `name`."""
        (span,) = self.spans(name)
        return span

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        """Return the finished spans whose parent is `parent`."""
        return [span for span in self.exporter.get_finished_spans() if is_child(span, parent)]


@pytest.fixture
def traces() -> Iterator[Traces]:
    """A fresh in-memory trace pipeline."""
    made = Traces()
    yield made
    made.provider.shutdown()


def is_child(span: ReadableSpan, parent: ReadableSpan) -> bool:
    """Return whether `parent` is `span`'s parent, in the same trace."""
    assert parent.context is not None
    assert span.context is not None
    return (
        span.parent is not None
        and span.parent.span_id == parent.context.span_id
        and span.context.trace_id == parent.context.trace_id
    )


def within(span: ReadableSpan, outer: ReadableSpan) -> bool:
    """Return whether `span` started and ended inside `outer`'s time."""
    assert span.start_time is not None
    assert span.end_time is not None
    assert outer.start_time is not None
    assert outer.end_time is not None
    return outer.start_time <= span.start_time <= span.end_time <= outer.end_time


def store_children(traces: Traces, operation: ReadableSpan) -> list[str]:
    """Return the names of `operation`'s store spans, in the order they ended."""
    return [s.name for s in traces.children(operation) if s.name.startswith("retrysafe.store.")]


# ---- ASGI -------------------------------------------------------------------------------------


def asgi_server(app: ASGIApp, tracer: Tracer) -> ASGIApp:
    """Wrap `app` in a span per request, the way an ASGI server's instrumentation does; check
    that the span is current again once `app` is done."""

    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("server") as server:
            await app(scope, receive, send)
            assert trace.get_current_span() is server

    return serve


def starlette_app(tracer: Tracer, gate: Callable[[], Awaitable[None]] | None = None) -> Starlette:
    """A one-route app whose handler makes a span of its own, and waits on `gate` if given."""

    async def pay(request: Request) -> JSONResponse:
        body = await request.json()
        with tracer.start_as_current_span("handler"):
            if gate is not None:
                await gate()
        return JSONResponse({"paid": body["amount"]}, status_code=201)

    return Starlette(routes=[Route("/pay", pay, methods=["POST"])])


def asgi_stack(traces: Traces, store: AsyncStore, app: Starlette, **options: Any) -> ASGIApp:
    """The server span around the retrysafe middleware (with the observer) around `app`."""
    middleware = AsgiMiddleware(
        app, store=store, observers=[traces.observer], scope_secret=SECRET, **options
    )
    return asgi_server(middleware, traces.tracer)


@contextlib.asynccontextmanager
async def asgi_client(app: ASGIApp) -> Any:
    """An httpx client calling `app` in process, as the caller `CALLER`."""
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": CALLER}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://app", headers=headers
    ) as client:
        yield client


async def pay(client: httpx.AsyncClient, key: str, amount: int) -> httpx.Response:
    """POST /pay with `key` and `amount`."""
    return await client.post("/pay", json={"amount": amount}, headers={"Idempotency-Key": key})


def test_otel_asgi_span_joins_the_server_trace_and_holds_the_handler_and_store_spans(
    traces: Traces,
) -> None:
    """The ASGI span is the server span's child; the handler's and the store's spans its own."""
    app = asgi_stack(traces, AsyncMemoryStore(), starlette_app(traces.tracer))

    async def scenario() -> None:
        async with asgi_client(app) as client:
            assert (await pay(client, "k-1", 5)).status_code == 201

    anyio.run(scenario)
    server, operation = traces.one("server"), traces.one("retrysafe.asgi")
    assert is_child(operation, server)
    assert within(operation, server)
    assert is_child(traces.one("handler"), operation)
    assert store_children(traces, operation) == EXECUTED
    for child in traces.children(operation):
        assert within(child, operation)
        assert child.kind is trace.SpanKind.INTERNAL
    assert operation.attributes is not None
    assert dict(operation.attributes) == {
        "retrysafe.face": "asgi",
        "retrysafe.namespace": "http",
        "retrysafe.key": "k-1",
        "retrysafe.scope": operation.attributes["retrysafe.scope"],
        "retrysafe.decision": "execute",
        "retrysafe.result": "stored",
    }
    assert len(str(operation.attributes["retrysafe.scope"])) == 16
    assert operation.status.status_code is StatusCode.UNSET
    assert operation.instrumentation_scope is not None
    assert operation.instrumentation_scope.name == "retrysafe"


def test_otel_asgi_replay_and_mismatch_are_attributes_not_errors(traces: Traces) -> None:
    """A replay and a mismatch each get a span with their decision, no result, no error."""
    app = asgi_stack(traces, AsyncMemoryStore(), starlette_app(traces.tracer))

    async def scenario() -> None:
        async with asgi_client(app) as client:
            first = await pay(client, "k-1", 5)
            replay = await pay(client, "k-1", 5)
            mismatch = await pay(client, "k-1", 6)
        assert first.status_code == replay.status_code == 201
        assert replay.headers["idempotent-replayed"] == "true"
        assert mismatch.status_code == 422

    anyio.run(scenario)
    servers = traces.spans("server")
    operations = traces.spans("retrysafe.asgi")
    assert len(servers) == len(operations) == 3
    decisions = []
    for server, operation in zip(servers, operations, strict=True):
        assert is_child(operation, server)
        assert operation.attributes is not None
        assert operation.attributes["retrysafe.key"] == "k-1"
        assert operation.status.status_code is StatusCode.UNSET
        attributes = operation.attributes
        decisions.append((attributes["retrysafe.decision"], attributes.get("retrysafe.result")))
    assert decisions == [("execute", "stored"), ("replay", None), ("mismatch", None)]
    assert len(traces.spans("handler")) == 1
    assert store_children(traces, operations[1]) == ["retrysafe.store.claim"]


class SignalledWaits(AsyncMemoryStore):
    """A memory store that says when a duplicate starts waiting."""

    waiting: asyncio.Event

    async def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Signal `waiting`, then wait as usual."""
        self.waiting.set()
        return await super().wait(identity, timeout=timeout)


def test_otel_asgi_waited_duplicate_gets_a_wait_span(traces: Traces) -> None:
    """A duplicate that waits for the first request has a wait span under its own span."""
    store = SignalledWaits()
    entered, release = asyncio.Event(), asyncio.Event()

    async def gate() -> None:
        entered.set()
        await release.wait()

    app = asgi_stack(traces, store, starlette_app(traces.tracer, gate), wait=10.0)

    async def scenario() -> None:
        store.waiting = asyncio.Event()
        with anyio.fail_after(10):
            async with asgi_client(app) as client:
                first = asyncio.ensure_future(pay(client, "k-1", 5))
                await entered.wait()
                duplicate = asyncio.ensure_future(pay(client, "k-1", 5))
                await store.waiting.wait()
                release.set()
                assert (await first).status_code == 201
                assert (await duplicate).headers["idempotent-replayed"] == "true"

    anyio.run(scenario)
    first, duplicate = sorted(traces.spans("retrysafe.asgi"), key=lambda s: s.start_time or 0)
    assert first.attributes is not None
    assert duplicate.attributes is not None
    assert first.attributes["retrysafe.decision"] == "execute"
    assert duplicate.attributes["retrysafe.decision"] == "replay"
    wait = traces.one("retrysafe.wait")
    assert is_child(wait, duplicate)
    assert within(wait, duplicate)
    assert wait.start_time is not None
    assert wait.end_time is not None
    assert wait.end_time > wait.start_time
    assert is_child(traces.one("handler"), first)


class UnavailableClaims(AsyncMemoryStore):
    """A memory store whose claims fail as if the server were down."""

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        """Fail."""
        raise StoreUnavailableError("the store is down")


def test_otel_asgi_store_unavailable_fails_the_span(traces: Traces) -> None:
    """A 503 for a store that failed: the claim span and the operation span are errors."""
    app = asgi_stack(traces, UnavailableClaims(), starlette_app(traces.tracer))

    async def scenario() -> None:
        async with asgi_client(app) as client:
            assert (await pay(client, "k-1", 5)).status_code == 503

    anyio.run(scenario)
    operation, claim = traces.one("retrysafe.asgi"), traces.one("retrysafe.store.claim")
    assert operation.attributes is not None
    assert operation.attributes["retrysafe.decision"] == "unavailable"
    assert operation.status.status_code is StatusCode.ERROR
    assert is_child(claim, operation)
    assert claim.status.status_code is StatusCode.ERROR
    assert claim.attributes is not None
    assert claim.attributes["error.type"] == "retrysafe.StoreUnavailableError"
    (event,) = claim.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.message"] == "the store is down"
    assert traces.spans("handler") == []


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_otel_asgi_on_a_real_store(
    traces: Traces, backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On Redis and PostgreSQL the store spans nest under the operation's span likewise."""
    with fresh_store_url(backend, request, tmp_path) as url:
        store = open_async_store(url)
        app = asgi_stack(traces, store, starlette_app(traces.tracer))

        async def scenario() -> None:
            try:
                async with asgi_client(app) as client:
                    assert (await pay(client, "k-1", 5)).status_code == 201
                    assert (await pay(client, "k-1", 5)).headers["idempotent-replayed"] == "true"
            finally:
                await store.aclose()

        anyio.run(scenario)
    servers, operations = traces.spans("server"), traces.spans("retrysafe.asgi")
    for server, operation in zip(servers, operations, strict=True):
        assert is_child(operation, server)
        for child in traces.children(operation):
            assert within(child, operation)
    assert [o.attributes and o.attributes["retrysafe.decision"] for o in operations] == [
        "execute",
        "replay",
    ]
    assert store_children(traces, operations[0]) == EXECUTED
    assert store_children(traces, operations[1]) == ["retrysafe.store.claim"]
    assert is_child(traces.one("handler"), operations[0])


# ---- WSGI -------------------------------------------------------------------------------------


def test_otel_wsgi_span_joins_the_server_trace_and_holds_the_handler_and_store_spans(
    traces: Traces,
) -> None:
    """Under WSGI too: the server span, then retrysafe's, then the handler's and the store's."""
    tracer = traces.tracer

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["wsgi.input"].read()
        with tracer.start_as_current_span("handler"):
            start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"paid"]

    middleware = WsgiMiddleware(
        app, store=MemoryStore(), observers=[traces.observer], scope_secret=SECRET
    )

    def server(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with tracer.start_as_current_span("server") as span:
            body = list(middleware(environ, start_response))
            assert trace.get_current_span() is span
            return body

    client = Client(server)
    headers = {"Authorization": CALLER, "Idempotency-Key": "k-1"}
    assert client.post("/pay", data=b"5", headers=headers).status_code == 201
    replay = client.post("/pay", data=b"5", headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    servers, operations = traces.spans("server"), traces.spans("retrysafe.wsgi")
    for server_span, operation in zip(servers, operations, strict=True):
        assert is_child(operation, server_span)
        assert within(operation, server_span)
    assert [dict(o.attributes or {}) for o in operations] == [
        {
            "retrysafe.face": "wsgi",
            "retrysafe.namespace": "http",
            "retrysafe.key": "k-1",
            "retrysafe.scope": (operations[0].attributes or {})["retrysafe.scope"],
            "retrysafe.decision": decision,
        }
        | result
        for decision, result in [("execute", {"retrysafe.result": "stored"}), ("replay", {})]
    ]
    assert is_child(traces.one("handler"), operations[0])
    assert store_children(traces, operations[0]) == EXECUTED


# ---- the decorator ----------------------------------------------------------------------------


def test_otel_decorator_sync_call_nests_under_the_callers_span(traces: Traces) -> None:
    """A decorated sync call's span is a child of the caller's; the function's spans its own."""
    tracer = traces.tracer

    @idempotent(MemoryStore(), key="order", namespace="charge", observers=[traces.observer])
    def charge(order: str, amount: int) -> int:
        with tracer.start_as_current_span("charging"):
            return amount

    with tracer.start_as_current_span("caller") as caller:
        assert charge("o-1", 5) == 5
        assert charge("o-1", 5) == 5
        assert trace.get_current_span() is caller
    caller_span = traces.one("caller")
    operations = traces.spans("retrysafe.decorator")
    assert len(operations) == 2
    for operation in operations:
        assert is_child(operation, caller_span)
    assert is_child(traces.one("charging"), operations[0])
    assert [(o.attributes or {}).get("retrysafe.decision") for o in operations] == [
        "execute",
        "replay",
    ]
    assert operations[0].attributes is not None
    assert operations[0].attributes["retrysafe.namespace"] == "charge"
    assert operations[0].attributes["retrysafe.key"] == "o-1"
    assert "retrysafe.scope" not in operations[0].attributes  # the empty scope: no digest
    assert store_children(traces, operations[0]) == EXECUTED


def test_otel_decorator_async_call_nests_under_the_callers_span(traces: Traces) -> None:
    """A decorated async call's span is a child of the caller's; the function's spans its own."""
    tracer = traces.tracer

    @idempotent(AsyncMemoryStore(), key="order", observers=[traces.observer])
    async def charge(order: str, amount: int) -> int:
        with tracer.start_as_current_span("charging"):
            await asyncio.sleep(0)
            return amount

    async def scenario() -> None:
        with tracer.start_as_current_span("caller") as caller:
            assert await charge("o-1", 5) == 5
            assert await charge("o-1", 5) == 5
            assert trace.get_current_span() is caller

    anyio.run(scenario)
    caller_span = traces.one("caller")
    operations = traces.spans("retrysafe.decorator")
    assert [is_child(operation, caller_span) for operation in operations] == [True, True]
    assert is_child(traces.one("charging"), operations[0])
    assert [(o.attributes or {}).get("retrysafe.decision") for o in operations] == [
        "execute",
        "replay",
    ]
    assert store_children(traces, operations[0]) == EXECUTED


class CompleteFailsOnce(MemoryStore):
    """A memory store whose first `complete` fails as if the server blinked."""

    failed = False

    def complete(self, *args: Any, **kwargs: Any) -> Any:
        """Fail the first time, then complete."""
        if not self.failed:
            self.failed = True
            raise StoreUnavailableError("the store blinked")
        return super().complete(*args, **kwargs)


def test_otel_outcome_not_stored_fails_the_span(
    traces: Traces, caplog: pytest.LogCaptureFixture
) -> None:
    """An outcome the store did not take (held and retried, B19) marks the span an error."""
    store = CompleteFailsOnce()

    @idempotent(store, key="order", observers=[traces.observer])
    def charge(order: str) -> str:
        return order

    assert charge("o-1") == "o-1"
    operation = traces.one("retrysafe.decorator")
    assert operation.attributes is not None
    assert operation.attributes["retrysafe.result"] == "store_failed"
    assert operation.status.status_code is StatusCode.ERROR
    complete = traces.spans("retrysafe.store.complete")[0]
    assert is_child(complete, operation)
    assert complete.status.status_code is StatusCode.ERROR
    # The held outcome is stored by a background thread, which then logs: wait for that line,
    # so that nothing of this test runs on, and logs, after it (into a closed capture).
    wait_until(lambda: "Stored the held outcome" in caplog.text)


# ---- choices ----------------------------------------------------------------------------------


def test_otel_record_key_false_leaves_the_key_out() -> None:
    """With record_key=False no span carries the idempotency key."""
    traces = Traces(record_key=False)

    @idempotent(MemoryStore(), key="order", observers=[traces.observer])
    def charge(order: str) -> str:
        return order

    charge("o-secret")
    traces.observer.attempted(Attempt("POST", "o-secret", 1, 201, None, 0.01, None))
    for span in traces.exporter.get_finished_spans():
        assert "o-secret" not in [str(v) for v in (span.attributes or {}).values()]
    traces.provider.shutdown()


def test_otel_record_key_false_keeps_the_key_out_of_store_errors(tmp_path: Path) -> None:
    """A store call that fails with a message naming the key (a record sealed with another
    key does not open) records its exception's type, not its message, with record_key=False."""
    traces = Traces(record_key=False)
    url = f"sqlite:///{tmp_path / 'sealed.db'}"
    key = "customer-jane@example.com-order-77"

    def charge_with(keyring: Keyring) -> None:
        @idempotent(open_store(url, encryption=keyring), key="order", namespace="charges",
                    observers=[traces.observer])  # fmt: skip
        def charge(order: str) -> str:
            return order

        charge(key)

    charge_with(Keyring([Keyring.generate_key()]))
    with pytest.raises(RecordUnreadableError):
        charge_with(Keyring([Keyring.generate_key()]))  # the record does not open with these
    events = [e for span in traces.exporter.get_finished_spans() for e in span.events]
    assert [e.attributes for e in events if e.name == "exception"] == [
        {"exception.type": "retrysafe.RecordUnreadableError"}
    ]
    spans = traces.exporter.get_finished_spans()
    assert not any("jane" in str(v) for s in spans for v in (s.attributes or {}).values())
    traces.provider.shutdown()


def test_otel_without_a_recording_tracer_the_callers_context_stays(traces: Traces) -> None:
    """With the API's no-op tracer the observer starts nothing and makes nothing current."""
    observer = OpenTelemetryObserver(trace.NoOpTracerProvider())
    tracer = traces.tracer

    current: list[trace.Span] = []

    @idempotent(MemoryStore(), key="order", observers=[observer])
    def charge(order: str) -> str:
        current.append(trace.get_current_span())
        return order

    with tracer.start_as_current_span("caller") as caller:
        assert charge("o-1") == "o-1"
    assert current == [caller]
    assert [span.name for span in traces.exporter.get_finished_spans()] == ["caller"]


def test_otel_store_calls_outside_an_operation_nest_under_the_current_span(
    traces: Traces,
) -> None:
    """A store call outside any operation is a child of the current span, or not traced."""
    observer = traces.observer
    start = time.time_ns()
    observer.store_call(None, StoreCall("complete", start, 0.002))  # no current span: dropped
    with traces.tracer.start_as_current_span("holder"):
        observer.store_call(None, StoreCall("complete", start, 0.002, TimeoutError("slow")))
    (call,) = traces.spans("retrysafe.store.complete")
    assert is_child(call, traces.one("holder"))
    assert call.start_time == start
    assert call.end_time == start + 2_000_000
    assert call.status.status_code is StatusCode.ERROR
    assert (call.attributes or {})["error.type"] == "TimeoutError"


def test_otel_hooks_for_an_operation_it_did_not_start_do_nothing(traces: Traces) -> None:
    """Hooks for an operation without this observer's span neither raise nor trace."""
    operation = Operation("asgi", decision="execute", result="stored", seconds=0.1)
    observer = traces.observer
    observer.decided(operation)
    observer.finished(operation)
    observer.store_call(operation, StoreCall("claim", time.time_ns(), 0.001))
    observer.waited(operation, StoreCall("wait", time.time_ns(), 0.001))
    observer.ended(operation)
    assert traces.exporter.get_finished_spans() == ()


def test_otel_client_attempts_are_events_on_the_current_span(traces: Traces) -> None:
    """Each client attempt becomes an event on the caller's span, with its status or error."""
    observer = traces.observer
    with traces.tracer.start_as_current_span("caller"):
        observer.attempted(Attempt("POST", "k-1", 1, None, "ConnectError", 0.01, 0.5))
        observer.attempted(Attempt("POST", "k-1", 2, 201, None, 0.02, None))
    events = traces.one("caller").events
    assert [event.name for event in events] == ["retrysafe.client.attempt"] * 2
    assert [dict(event.attributes or {}) for event in events] == [
        {
            "http.request.method": "POST",
            "retrysafe.client.attempt": 1,
            "retrysafe.client.seconds": 0.01,
            "retrysafe.key": "k-1",
            "error.type": "ConnectError",
            "retrysafe.client.retry_in": 0.5,
        },
        {
            "http.request.method": "POST",
            "retrysafe.client.attempt": 2,
            "retrysafe.client.seconds": 0.02,
            "retrysafe.key": "k-1",
            "http.response.status_code": 201,
        },
    ]
