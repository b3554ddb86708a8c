"""Real servers for the HTTP middleware tests: uvicorn for ASGI apps, waitress for WSGI apps.

`serve` is parametrized over three faces: Starlette and FastAPI on uvicorn (the ASGI middleware)
and Flask on waitress (the WSGI middleware). `serve(**options)` builds the face's app, wraps it
in the middleware with `options`, starts a server on a free loopback port and returns a
`Service`: its base URL, an httpx client, the handler `Recorder` and access to the store.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from waitress import wasyncore
from waitress.server import create_server

from retrysafe import ManualClock, Record, open_async_store, open_store
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe.asgi import IdempotencyMiddleware as AsgiMiddleware
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from retrysafe.wsgi import IdempotencyMiddleware as WsgiMiddleware
from tests.conftest import fresh_store_url
from tests.http.apps import Recorder, fastapi_app, flask_app, starlette_app
from tests.servers import AsgiServer

ASGI_FACES = ["starlette", "fastapi"]
FACES = [*ASGI_FACES, "flask"]
_START_SECONDS = 10.0


class WsgiServer:
    """waitress serving a WSGI app from a thread, with enough threads for parallel tests.

    The thread drives waitress's event loop itself, so it can also close it: closing sockets
    from another thread would race the loop's select.
    """

    def __init__(self, app: Any) -> None:
        self._server: Any = create_server(
            app, host="127.0.0.1", port=0, threads=64, channel_timeout=5
        )
        self.url = f"http://127.0.0.1:{self._server.effective_port}"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="waitress")
        self._thread.start()

    def _run(self) -> None:
        server = self._server
        while not self._stopping.is_set():
            wasyncore.loop(timeout=0.02, map=server._map, count=1)
        server.task_dispatcher.shutdown(timeout=5)
        for channel in list(server._map.values()):
            channel.close()

    def call(self, value: Any) -> Any:
        """Return `value` (sync store calls need no loop)."""
        return value

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._stopping.set()
        self._thread.join(10)


CALLER: Final = "Bearer test-caller"
"""The credential test clients send: every keyed request needs a caller to be scoped to (B8)."""


def make_client(url: str) -> httpx.Client:
    """Return an httpx client for `url` that sends small writes at once (TCP_NODELAY).

    Without it, Nagle's algorithm holds the request body until the headers are acknowledged,
    and the server's delayed ACK makes every request take 40 ms. It sends `CALLER`.
    """
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    transport = httpx.HTTPTransport(socket_options=nodelay)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    return httpx.Client(
        base_url=url,
        timeout=15,
        transport=transport,
        limits=limits,
        headers={"Authorization": CALLER},
    )


def app_records(records: Iterable[Record]) -> list[Record]:
    """Return `records` but the scope secret the middleware keeps in the store (B8)."""
    return [r for r in records if r.identity.namespace != SECRET_IDENTITY.namespace]


def credential_scope(secret: str | bytes, normalised: str = "bearer test-caller") -> str:
    """Return the scope stored for an Authorization credential under `secret` (B8): the
    HMAC-SHA256 of the credential `normalised` (scheme in lower case, one space)."""
    key = secret.encode() if isinstance(secret, str) else secret
    message = b"credential\0authorization\0" + normalised.encode()
    return "c:" + hmac.new(key, message, hashlib.sha256).hexdigest()


class Switch:
    """An app that forwards to `target`, swapped per test, counting requests in progress.

    Under ASGI it is an ASGI app and under WSGI a WSGI app, so one server serves many tests.
    """

    def __init__(self, *, asgi: bool) -> None:
        self.target: Any = None
        self._asgi = asgi
        self._active = 0
        self._lock = threading.Lock()

    def _enter(self) -> Any:
        with self._lock:
            self._active += 1
            return self.target

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1

    def __call__(self, *args: Any) -> Any:
        """Forward one request or connection to the current target."""
        if self._asgi:
            return self._forward_asgi(*args)
        target = self._enter()
        try:
            # Buffering here keeps the count exact; the middleware's own iterable is closed.
            result = target(*args)
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            self._leave()

    async def _forward_asgi(self, scope: Any, receive: Any, send: Any) -> None:
        target = self._enter()
        try:
            await target(scope, receive, send)
        finally:
            self._leave()

    def drain(self, seconds: float = 10.0) -> None:
        """Wait until no request is in progress (the last test's stragglers finished)."""
        wait_until(lambda: self._active == 0, seconds)


@dataclass
class Shared:
    """One face's long-lived server, app and recorder."""

    server: AsgiServer | WsgiServer
    switch: Switch
    app: Any
    recorder: Recorder


@dataclass
class Service:
    """A running app behind the middleware."""

    face: str
    url: str
    recorder: Recorder
    middleware: Any
    store: Any
    server: AsgiServer | WsgiServer
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = make_client(self.url)

    @property
    def is_asgi(self) -> bool:
        """Whether this is an ASGI face."""
        return self.face in ASGI_FACES

    def store_call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call store method `name` on the face's store (on the server's loop if async)."""
        return self.server.call(getattr(self.store, name)(*args, **kwargs))

    def records(self) -> list[Record]:
        """Return every live record in the store but the scope secret the middleware keeps."""
        return app_records(self.store_call("list_records", limit=10_000))

    def post(
        self, path: str, key: str | None = None, *, anonymous: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """POST to `path`, with `Idempotency-Key: key` when a key is given; `anonymous`
        leaves out the client's credential (no Authorization header at all)."""
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Idempotency-Key"] = key
        request = self.client.build_request("POST", path, headers=headers, **kwargs)
        if anonymous:
            del request.headers["Authorization"]
        return self.client.send(request)


def build_app(face: str, recorder: Recorder) -> Any:
    """Return the face's framework app."""
    if face == "starlette":
        return starlette_app(recorder)
    if face == "fastapi":
        return fastapi_app(recorder)
    return flask_app(recorder).wsgi_app


def _start_server(face: str, app: Any, on_close: Any = None) -> AsgiServer | WsgiServer:
    if face in ASGI_FACES:
        return AsgiServer(app, on_close=on_close)
    return WsgiServer(app)


@pytest.fixture(scope="session")
def shared_servers() -> Iterator[dict[str, Shared]]:
    """One server per face for the whole session, started on first use."""
    shared: dict[str, Shared] = {}
    yield shared
    for entry in shared.values():
        entry.recorder.gate.set()
        entry.server.stop()


def _open_store(face: str, store_url: str, clock: ManualClock | None) -> Any:
    if face in ASGI_FACES:
        if store_url == "memory://":
            return AsyncMemoryStore(clock=clock)
        return open_async_store(store_url, clock=clock)
    if store_url == "memory://":
        return MemoryStore(clock=clock)
    return open_store(store_url, clock=clock)


@pytest.fixture
def start_service(shared_servers: dict[str, Shared]) -> Iterator[Callable[..., Service]]:
    """A factory: `face`'s app behind a new middleware on a real server.

    By default the face's shared server is used; `dedicated=True` starts a server of its own
    (for tests that run two services at once). `wrap` wraps the middleware in an outer layer.
    """
    services: list[tuple[Service, Shared | None]] = []

    def start(
        face: str,
        *,
        store_url: str = "memory://",
        clock: ManualClock | None = None,
        wrap: Callable[[Any], Any] | None = None,
        dedicated: bool = False,
        store: Any = None,
        **options: Any,
    ) -> Service:
        middleware_class = AsgiMiddleware if face in ASGI_FACES else WsgiMiddleware
        store = store if store is not None else _open_store(face, store_url, clock)
        if dedicated:
            recorder = Recorder()
            middleware = middleware_class(build_app(face, recorder), store=store, **options)
            on_close = store.aclose if face in ASGI_FACES else None
            server = _start_server(face, wrap(middleware) if wrap else middleware, on_close)
            shared = None
        else:
            shared = shared_servers.get(face)
            if shared is None:
                recorder = Recorder()
                switch = Switch(asgi=face in ASGI_FACES)
                app = build_app(face, recorder)
                shared = shared_servers[face] = Shared(
                    _start_server(face, switch), switch, app, recorder
                )
            shared.recorder.reset()
            recorder, server = shared.recorder, shared.server
            middleware = middleware_class(shared.app, store=store, **options)
            shared.switch.target = wrap(middleware) if wrap else middleware
        service = Service(face, server.url, recorder, middleware, store, server)
        services.append((service, shared))
        return service

    yield start
    for service, shared in services:
        service.recorder.gate.set()
        service.client.close()
        if shared is None:
            service.server.stop()
        else:
            shared.switch.drain()
        if service.is_asgi:
            if shared is not None:
                service.server.call(service.store.aclose())
        else:
            service.store.close()


@pytest.fixture(params=FACES)
def face(request: pytest.FixtureRequest) -> str:
    """Each face: Starlette and FastAPI on uvicorn, Flask on waitress."""
    return str(request.param)


@pytest.fixture
def serve(face: str, start_service: Callable[..., Service]) -> Callable[..., Service]:
    """Start the parametrized face behind the middleware with the given options."""
    return lambda **options: start_service(face, **options)


@pytest.fixture(params=["sqlite", "postgres", "mysql", "redis", "redis-cluster"])
def real_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh store on each real backend; what it created is removed after."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        yield url


def parallel(count: int, call: Callable[[int], Any]) -> list[Any]:
    """Run `call(i)` for i in range(count) on `count` threads at once; return the results."""
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait(10)
        return call(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until `condition()` holds, at most `seconds`, polling."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def is_problem(response: httpx.Response, status: int, slug: str) -> bool:
    """Return whether `response` is retrysafe's problem `slug` with `status` (B24)."""
    if response.status_code != status:
        return False
    if response.headers.get("content-type") != "application/problem+json":
        return False
    if response.headers.get("cache-control") != "no-store":
        return False
    data = response.json()
    return (
        data["status"] == status
        and data["type"].endswith("#" + slug)
        and bool(data["title"])
        and bool(data["detail"])
    )
