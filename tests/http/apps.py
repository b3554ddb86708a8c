"""The same small API written for Starlette, FastAPI and Flask, recording what its handlers did.

Endpoints (all POST unless said otherwise):
- `/payments`: 201 JSON `{"n": <call number>, "body": <request JSON>}`, with Location, ETag,
  Set-Cookie and X-Request-Id headers; `GET /payments` answers the same without side effect.
- `/status/<code>`: answers `<code>` with body `status <code>` (none for a 204 or a 304).
- `/fail`: raises RuntimeError.
- `/gate`: waits (at most 10 s) until the test opens `recorder.gate`, then 201.
- `/slow?seconds=S`: sleeps S seconds, then 201.
- `/stream?size=N&chunks=K`: streams N bytes (`abc...`) in K chunks, 201.
- `/echo`: 200 JSON of the Idempotency-Key header and body the handler saw.
- `/cookie`: 201 with only Set-Cookie and Date headers.

Every handler call is counted in `recorder.calls[path]`.
"""

from __future__ import annotations

import asyncio
import json
import string
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

# At module level: FastAPI resolves the (string) annotations of endpoints in module globals.
from fastapi import Request as FastAPIRequest

GATE_SECONDS = 10.0


def _status_body(code: int) -> str:
    """The body `/status/<code>` answers with: none where HTTP allows none (204, 304)."""
    return "" if code in (204, 304) else f"status {code}"


class Recorder:
    """Counts handler calls per path; thread-safe. `gate` holds `/gate` handlers until set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def reset(self) -> None:
        """Forget every call and close the gate, for the next test."""
        with self._lock:
            self.calls.clear()
        self.gate.clear()
        self.entered.clear()

    def count(self, path: str) -> int:
        """Count a call of `path`; return its call number."""
        with self._lock:
            self.calls[path] += 1
            return self.calls[path]


def payload(size: int) -> bytes:
    """Return `size` deterministic bytes."""
    alphabet = (string.ascii_letters + string.digits).encode()
    return (alphabet * (size // len(alphabet) + 1))[:size]


def _chunks(size: int, count: int) -> Iterator[bytes]:
    data = payload(size)
    step = max(1, -(-size // max(1, count)))
    for start in range(0, size, step):
        yield data[start : start + step]


PAYMENT_HEADERS = {
    "Location": "/payments/1",
    "ETag": '"v1"',
    "Set-Cookie": "session=secret; Path=/",
    "X-Request-Id": "req-1",
}


def starlette_app(recorder: Recorder) -> Any:
    """The API on Starlette."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def payments(request: Request) -> Response:
        if request.method in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return JSONResponse({"calls": recorder.calls["/payments"]})
        body = await request.json()
        n = recorder.count("/payments")
        return JSONResponse({"n": n, "body": body}, status_code=201, headers=PAYMENT_HEADERS)

    async def status(request: Request) -> Response:
        code = int(request.path_params["code"])
        recorder.count("/status")
        return Response(_status_body(code), status_code=code, media_type="text/plain")

    async def fail(request: Request) -> Response:
        recorder.count("/fail")
        raise RuntimeError("handler failed")

    async def gate(request: Request) -> Response:
        n = recorder.count("/gate")
        recorder.entered.set()
        deadline = time.monotonic() + GATE_SECONDS
        # The gate is a threading.Event opened by the test thread: poll it.
        while not recorder.gate.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return JSONResponse({"n": n}, status_code=201)

    async def slow(request: Request) -> Response:
        n = recorder.count("/slow")
        await asyncio.sleep(float(request.query_params["seconds"]))
        return JSONResponse({"n": n}, status_code=201)

    async def stream(request: Request) -> Response:
        recorder.count("/stream")
        size, count = int(request.query_params["size"]), int(request.query_params["chunks"])

        async def body() -> AsyncIterator[bytes]:
            for chunk in _chunks(size, count):
                yield chunk

        return StreamingResponse(body(), status_code=201, media_type="application/octet-stream")

    async def echo(request: Request) -> Response:
        recorder.count("/echo")
        body = await request.body()
        key = request.headers.get("idempotency-key")
        return JSONResponse({"key": key, "body": body.decode("latin-1")})

    async def cookie(request: Request) -> Response:
        recorder.count("/cookie")
        return Response(
            "ok", status_code=201, headers={"Set-Cookie": "a=b", "Date": "Mon, 01 Jan 2024"}
        )

    return Starlette(
        routes=[
            Route("/payments", payments, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
            Route("/status/{code}", status, methods=["POST", "PATCH"]),
            Route("/fail", fail, methods=["POST"]),
            Route("/gate", gate, methods=["POST"]),
            Route("/slow", slow, methods=["POST"]),
            Route("/stream", stream, methods=["POST"]),
            Route("/echo", echo, methods=["POST", "GET"]),
            Route("/cookie", cookie, methods=["POST"]),
        ]
    )


def fastapi_app(recorder: Recorder) -> Any:
    """The API on FastAPI (the endpoints the FastAPI tests use)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    app = FastAPI()

    @app.get("/payments")
    async def list_payments() -> dict[str, int]:
        return {"calls": recorder.calls["/payments"]}

    @app.api_route("/payments", methods=["POST", "PATCH", "PUT"], status_code=201)
    async def create_payment(body: dict[str, Any]) -> JSONResponse:
        n = recorder.count("/payments")
        return JSONResponse({"n": n, "body": body}, status_code=201, headers=PAYMENT_HEADERS)

    @app.post("/status/{code}")
    async def status(code: int) -> PlainTextResponse:
        recorder.count("/status")
        return PlainTextResponse(_status_body(code), status_code=code)

    @app.post("/fail")
    async def fail() -> None:
        recorder.count("/fail")
        raise RuntimeError("handler failed")

    @app.post("/gate", status_code=201)
    async def gate() -> dict[str, int]:
        n = recorder.count("/gate")
        recorder.entered.set()
        deadline = time.monotonic() + GATE_SECONDS
        # The gate is a threading.Event opened by the test thread: poll it.
        while not recorder.gate.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return {"n": n}

    @app.post("/slow", status_code=201)
    async def slow(seconds: float) -> dict[str, int]:
        n = recorder.count("/slow")
        await asyncio.sleep(seconds)
        return {"n": n}

    @app.post("/stream")
    async def stream(size: int, chunks: int) -> StreamingResponse:
        recorder.count("/stream")

        async def body() -> AsyncIterator[bytes]:
            for chunk in _chunks(size, chunks):
                yield chunk

        return StreamingResponse(body(), status_code=201, media_type="application/octet-stream")

    @app.post("/echo")
    async def echo(request: FastAPIRequest) -> dict[str, str | None]:
        recorder.count("/echo")
        body = await request.body()
        return {"key": request.headers.get("idempotency-key"), "body": body.decode("latin-1")}

    @app.post("/cookie")
    async def cookie() -> PlainTextResponse:
        recorder.count("/cookie")
        return PlainTextResponse(
            "ok", status_code=201, headers={"Set-Cookie": "a=b", "Date": "Mon, 01 Jan 2024"}
        )

    return app


def flask_app(recorder: Recorder) -> Any:
    """The API on Flask (WSGI)."""
    from flask import Flask, Response, request

    app = Flask(__name__)

    @app.route("/payments", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def payments() -> Response:
        if request.method in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return Response(json.dumps({"calls": recorder.calls["/payments"]}))
        body = request.get_json()
        n = recorder.count("/payments")
        return Response(
            json.dumps({"n": n, "body": body}, separators=(",", ":")),
            status=201,
            headers=PAYMENT_HEADERS,
            content_type="application/json",
        )

    @app.post("/status/<int:code>")
    def status(code: int) -> Response:
        recorder.count("/status")
        return Response(_status_body(code), status=code, content_type="text/plain")

    @app.post("/fail")
    def fail() -> Response:
        recorder.count("/fail")
        raise RuntimeError("handler failed")

    @app.post("/gate")
    def gate() -> Response:
        n = recorder.count("/gate")
        recorder.entered.set()
        recorder.gate.wait(GATE_SECONDS)
        return Response(json.dumps({"n": n}), status=201, content_type="application/json")

    @app.post("/slow")
    def slow() -> Response:
        n = recorder.count("/slow")
        time.sleep(float(request.args["seconds"]))
        return Response(json.dumps({"n": n}), status=201, content_type="application/json")

    @app.post("/stream")
    def stream() -> Response:
        recorder.count("/stream")
        size, count = int(request.args["size"]), int(request.args["chunks"])
        return Response(_chunks(size, count), status=201, content_type="application/octet-stream")

    @app.route("/echo", methods=["POST", "GET"])
    def echo() -> Response:
        recorder.count("/echo")
        body = request.get_data()
        data = {"key": request.headers.get("idempotency-key"), "body": body.decode("latin-1")}
        return Response(json.dumps(data), content_type="application/json")

    @app.post("/cookie")
    def cookie() -> Response:
        recorder.count("/cookie")
        return Response("ok", status=201, headers={"Set-Cookie": "a=b", "Date": "Mon, 01 Jan 2024"})

    return app
