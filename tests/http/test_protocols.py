"""ASGI and WSGI protocol details the framework tests do not reach (PEP 3333, ASGI extensions).

These drive the middleware directly, the way a server does, with the memory store.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from retrysafe import State
from retrysafe.asgi import IdempotencyMiddleware as AsgiMiddleware
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from retrysafe.wsgi import IdempotencyMiddleware as WsgiMiddleware
from tests.http.conftest import CALLER, app_records


def _environ(key: str = "k", body: bytes = b"{}") -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/x",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_IDEMPOTENCY_KEY": key,
        "HTTP_AUTHORIZATION": CALLER,
        "wsgi.input": io.BytesIO(body),
    }


class Started:
    """A start_response that records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.calls.append((status, headers))
        return lambda data: None


def _serve_wsgi(middleware: Any, environ: dict[str, Any]) -> tuple[Started, bytes]:
    started = Started()
    result = middleware(environ, started)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return started, body


class ClosingBody:
    """An app iterable that counts its close() calls (PEP 3333: exactly once)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("limit", [1000, 5], ids=["buffered", "streamed"])
def test_wsgi_closes_the_app_iterable_exactly_once(limit: int) -> None:
    """The app's iterable is closed once, whether the body was buffered or streamed."""
    bodies: list[ClosingBody] = []

    def app(environ: Any, start_response: Callable[..., Any]) -> ClosingBody:
        start_response("201 Created", [("Content-Type", "text/plain")])
        bodies.append(ClosingBody([b"abc", b"defgh", b"ij"]))
        return bodies[-1]

    middleware = WsgiMiddleware(app, store=MemoryStore(), max_response_size=limit)
    started, body = _serve_wsgi(middleware, _environ())
    assert body == b"abcdefghij"
    assert started.calls[0][0] == "201 Created"
    assert bodies[0].closed == 1
    started, again = _serve_wsgi(middleware, _environ())
    assert len(bodies) == 1  # not run again
    if limit > 10:
        assert (started.calls[0][0], again) == ("201 Created", b"abcdefghij")
    else:
        assert started.calls[0][0] == "410 Gone"


def test_wsgi_legacy_write_callable_is_captured() -> None:
    """Output written through start_response's write() is part of the stored outcome."""

    def app(environ: Any, start_response: Callable[..., Any]) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]

    middleware = WsgiMiddleware(app, store=MemoryStore())
    assert _serve_wsgi(middleware, _environ())[1] == b"written returned"
    started, replay = _serve_wsgi(middleware, _environ())
    assert replay == b"written returned"
    assert ("Idempotent-Replayed".lower(), "true") in [(n, v) for n, v in started.calls[0][1]]


def test_wsgi_app_exception_releases_and_propagates() -> None:
    """An exception from the WSGI app propagates to the server and releases the claim."""
    calls = []

    def app(environ: Any, start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(1)
        raise RuntimeError("boom")

    store = MemoryStore()
    middleware = WsgiMiddleware(app, store=store)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            _serve_wsgi(middleware, _environ())
    assert len(calls) == 2
    assert app_records(store.list_records()) == []


class FailingBody:
    """An app iterable that raises as it is read, and again as it is closed."""

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        raise RuntimeError("the body failed")

    def close(self) -> None:
        raise ValueError("and so did its close()")


def test_b18_a_body_whose_close_raises_after_an_error_still_releases_the_claim() -> None:
    """The app's iterable fails, and its `close()` raises too: the claim is released all the
    same (a retry runs again). Before, the claim stayed in flight, renewed for as long as the
    process lived."""
    calls: list[int] = []

    def app(environ: Any, start_response: Callable[..., Any]) -> FailingBody:
        calls.append(1)
        start_response("201 Created", [])
        return FailingBody()

    store = MemoryStore()
    middleware = WsgiMiddleware(app, store=store)
    for _ in range(2):
        with pytest.raises(ValueError, match="close"):
            _serve_wsgi(middleware, _environ())
        assert app_records(store.list_records()) == []
    assert calls == [1, 1]


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_b22_an_app_that_fails_after_write_streamed_past_the_limit_stores_not_stored(
    failure: type[BaseException],
) -> None:
    """An app whose `write()` went past the storable size (so its 201 and bytes went out) and
    that then raises or is interrupted: "response not stored" is stored and the retry gets 410.
    Before, the claim was released and the retry ran the app again."""
    calls: list[int] = []

    def app(environ: Any, start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(1)
        write = start_response("201 Created", [])
        write(b"x" * 10)
        if len(calls) == 1:
            raise failure("after write()")
        return []

    store = MemoryStore()
    middleware = WsgiMiddleware(app, store=store, max_response_size=5)
    with pytest.raises(failure):
        _serve_wsgi(middleware, _environ())
    started, _ = _serve_wsgi(middleware, _environ())
    assert started.calls[-1][0].startswith("410")
    assert calls == [1]


class BrokenBody:
    """An app iterable past the storable size that fails mid-stream; its `close()` may fail."""

    def __init__(self, failure: type[BaseException], close_fails: bool) -> None:
        self._chunks = iter([b"x" * 10, b"y" * 10])
        self._failure, self._close_fails = failure, close_fails

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = next(self._chunks, None)
        if chunk is None:
            raise self._failure("mid-stream")
        return chunk

    def close(self) -> None:
        if self._close_fails:
            raise ValueError("close() failed too")


@pytest.mark.parametrize("closed", ["never", "close-fails"])
def test_b22_a_streamed_body_that_fails_is_stored_whatever_close_does(closed: str) -> None:
    """The body fails mid-stream: its outcome is stored at once, so a server that never calls
    `close()` after an interruption leaves no claim renewed for the life of the process, and a
    `close()` that fails raises its own error with the outcome already stored."""
    store = MemoryStore()

    def app(environ: Any, start_response: Callable[..., Any]) -> BrokenBody:
        start_response("201 Created", [])
        return BrokenBody(KeyboardInterrupt, close_fails=closed == "close-fails")

    middleware = WsgiMiddleware(app, store=store, max_response_size=5)
    result = middleware(_environ(), Started())
    with pytest.raises(KeyboardInterrupt):
        b"".join(result)
    if closed == "close-fails":
        with pytest.raises(ValueError, match="close"):
            result.close()  # type: ignore[attr-defined]
    (record,) = app_records(store.list_records())
    assert record.state is State.DONE


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_b22_a_wsgi_streamed_body_that_fails_stores_response_not_stored(
    failure: type[BaseException],
) -> None:
    """A body that raises (or is interrupted) after the stream started, past the storable size:
    its 201 went out, so the effect happened; "response not stored" is stored and the retry
    gets 410, as under ASGI. Before, the claim was released and the retry ran the app again."""

    def body() -> Iterator[bytes]:
        yield b"x" * 10
        raise failure("mid-stream")

    calls: list[int] = []

    def app(environ: Any, start_response: Callable[..., Any]) -> Iterator[bytes]:
        calls.append(1)
        start_response("201 Created", [])
        return body()

    store = MemoryStore()
    middleware = WsgiMiddleware(app, store=store, max_response_size=5)
    with pytest.raises(failure):
        _serve_wsgi(middleware, _environ())
    (record,) = app_records(store.list_records())
    assert record.state is State.DONE
    started, _ = _serve_wsgi(middleware, _environ())
    assert started.calls[0][0].startswith("410")
    assert calls == [1]


def test_asgi_hides_send_extensions_it_cannot_capture() -> None:
    """Tracked requests do not offer pathsend, zerocopy or trailers; others keep them."""
    seen: list[set[str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(set(scope.get("extensions", {})))
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = AsgiMiddleware(app, store=AsyncMemoryStore())
    extensions = {"http.response.pathsend": {}, "http.response.trailers": {}, "tls": {}}

    async def call(headers: list[tuple[bytes, bytes]]) -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/x",
            "query_string": b"",
            "headers": headers,
            "extensions": extensions,
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            pass

        await middleware(scope, receive, send)

    anyio.run(call, [(b"idempotency-key", b"k"), (b"authorization", CALLER.encode())])
    anyio.run(call, [])
    assert seen == [{"tls"}, set(extensions)]
