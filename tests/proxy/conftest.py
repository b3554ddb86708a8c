"""A real upstream (Starlette on uvicorn, in a thread) and `retrysafe proxy` as real processes.

The upstream counts its handler calls in a `Recorder` and echoes what it received, so tests can
see what the proxy forwarded. Proxies are started with the CLI, each in its own process, on a
free loopback port; every proxy a test module needs is started at once, in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
import typing
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import retrysafe
from retrysafe._flow.secret import SECRET_IDENTITY
from tests.integrations.servers import AsgiServer
from tests.servers import announced

GATE_SECONDS = 10.0
_STOP_SECONDS = 10.0


class Recorder:
    """What the upstream saw: calls per path; `gate` holds `/gate` until set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def count(self, path: str) -> int:
        """Count a call of `path`; return its call number."""
        with self._lock:
            self.calls[path] += 1
            return self.calls[path]

    def reset(self) -> None:
        """Forget every call and close the gate."""
        with self._lock:
            self.calls.clear()
        self.gate.clear()
        self.entered.clear()


def upstream_app(recorder: Recorder) -> Starlette:
    """The upstream service."""

    async def payments(request: Request) -> Response:
        body = await request.body()
        n = recorder.count("/payments")
        return JSONResponse(
            {"n": n, "body": body.decode()}, status_code=201, headers={"Location": f"/p/{n}"}
        )

    async def headers(request: Request) -> Response:
        recorder.count("/headers")
        seen = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw]
        return JSONResponse(
            {"headers": seen, "client": request.client.host if request.client else None},
            headers={
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
                "Upgrade": "h2c",
                "X-Hop": "secret",
                "Connection": "X-Hop",
                "X-End": "kept",
            },
        )

    async def upload(request: Request) -> Response:
        recorder.count("/upload")
        digest = hashlib.sha256()
        size = chunks = 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
        return JSONResponse(
            {"size": size, "sha256": digest.hexdigest(), "chunks": chunks}, status_code=201
        )

    async def stream(request: Request) -> Response:
        recorder.count("/stream")
        size, count = int(request.query_params["size"]), int(request.query_params["chunks"])

        async def body() -> AsyncIterator[bytes]:
            step = -(-size // count)
            for start in range(0, size, step):
                yield bytes([65 + (start // step) % 26]) * min(step, size - start)
                await asyncio.sleep(0)

        return StreamingResponse(body(), status_code=201, media_type="application/octet-stream")

    async def gate(request: Request) -> Response:
        n = recorder.count("/gate")
        recorder.entered.set()
        await asyncio.to_thread(recorder.gate.wait, GATE_SECONDS)
        return JSONResponse({"n": n}, status_code=201)

    async def slow(request: Request) -> Response:
        n = recorder.count("/slow")
        await asyncio.sleep(float(request.query_params["seconds"]))
        return JSONResponse({"n": n, "pid": os.getpid()}, status_code=201)

    return Starlette(
        routes=[
            Route("/payments", payments, methods=["GET", "POST"]),
            Route("/headers", headers, methods=["GET", "POST"]),
            Route("/upload", upload, methods=["POST"]),
            Route("/stream", stream, methods=["GET", "POST"]),
            Route("/gate", gate, methods=["POST"]),
            Route("/slow", slow, methods=["POST"]),
        ]
    )


@dataclass
class Upstream:
    """The running upstream service."""

    url: str
    recorder: Recorder


@pytest.fixture(scope="package")
def upstream() -> Iterator[Upstream]:
    """The upstream service on a free loopback port, for every proxy test."""
    recorder = Recorder()
    server = AsgiServer(upstream_app(recorder))
    yield Upstream(server.url, recorder)
    server.stop()


@pytest.fixture
def recorder(upstream: Upstream) -> Recorder:
    """The upstream's recorder, reset for this test."""
    upstream.recorder.reset()
    return upstream.recorder


@dataclass
class Proxy:
    """A `retrysafe proxy` process."""

    url: str
    process: subprocess.Popen[bytes]
    metrics: str | None = None  # the metrics port's base URL, with --metrics-port


ANNOUNCED = r"^retrysafe proxy: (http://\S+) -> .*?(?:, metrics (http://\S+)/metrics)?$"
"""The line a proxy prints once it listens, naming the ports it bound (`--port 0`)."""


def proxy_command(*args: str) -> list[str]:
    """Return the command line that runs `retrysafe proxy args...` with this interpreter."""
    return [sys.executable, "-c", "from retrysafe.cli import main; main()", "proxy", *args]


def start_proxies(specs: list[tuple[list[str], Path | None]]) -> list[Proxy]:
    """Start a proxy per (arguments, working directory), all at once, each on a port of its
    own (`--port 0`, and any `--metrics-port 0`); wait until each says where it listens."""
    started = []
    for args, cwd in specs:
        process = subprocess.Popen(
            proxy_command(*args, "--port", "0"),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(Proxy("", process))
    try:
        for proxy in started:
            assert proxy.process.stdout is not None
            listening = announced(proxy.process.stdout, ANNOUNCED, 30)
            proxy.url, proxy.metrics = listening[1], listening[2]
    except RuntimeError as error:
        _end(started)  # each has exited: its stderr reads to its end, then is closed
        said = [
            _said(n, args, proxy)
            for n, ((args, _), proxy) in enumerate(zip(specs, started, strict=True))
        ]
        _close(started)
        raise RuntimeError(f"a proxy did not start ({error}).\n" + "\n".join(said)) from None
    return started


def _said(n: int, args: list[str], proxy: Proxy) -> str:
    """Return what an ended proxy wrote on stderr, under its number, arguments and exit code."""
    stderr = proxy.process.stderr
    text = stderr.read().decode("utf-8", "backslashreplace") if stderr is not None else ""
    head = f"proxy {n} ({' '.join(args)}), exit code {proxy.process.returncode}"
    return f"{head}, stderr:\n{text.rstrip() or '(empty)'}"


def stop_proxies(proxies: list[Proxy]) -> None:
    """Stop the proxies (SIGTERM: a graceful shutdown that closes the store), then reap them."""
    _end(proxies)
    _close(proxies)


def _end(proxies: list[Proxy]) -> None:
    """Stop the proxies still running (SIGTERM, then SIGKILL), and reap every one."""
    for proxy in proxies:
        if proxy.process.poll() is None:
            proxy.process.terminate()
    for proxy in proxies:
        try:
            proxy.process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proxy.process.kill()
            proxy.process.wait(_STOP_SECONDS)


def _close(proxies: list[Proxy]) -> None:
    for proxy in proxies:
        for stream in (proxy.process.stdout, proxy.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def proxies() -> Iterator[Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]]:
    """A starter of proxies that stops them all when the module is done."""
    running: list[Proxy] = []

    def start(specs: list[tuple[list[str], Path | None]]) -> list[Proxy]:
        started = start_proxies(specs)
        running.extend(started)
        return started

    yield start
    stop_proxies(running)


def drop_postgres_table(url: str, table: str) -> None:
    """Drop `table`, which the test created."""
    import psycopg

    with contextlib.suppress(Exception), psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')  # type: ignore[arg-type]


def delete_redis_prefix(url: str, prefix: str) -> None:
    """Delete the Redis keys under `prefix`, which the test created."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def records(store_path: Path) -> int:
    """Return how many records the SQLite store at `store_path` holds (not its scope secret)."""
    store = retrysafe.open_store(f"sqlite:///{store_path}")
    try:
        records = store.list_records(limit=1000)
        return sum(r.identity.namespace != SECRET_IDENTITY.namespace for r in records)
    finally:
        store.close()


def upstream_entered(recorder: Recorder, seconds: float = GATE_SECONDS) -> None:
    """Wait until a `/gate` request reached the upstream."""
    if not recorder.entered.wait(seconds):
        raise AssertionError("the request never reached the upstream")


class StderrLines:
    """The lines a proxy process writes on stderr, read in a thread as they come, so a test
    can wait for one (bounded) and see them all once the process has exited."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        threading.Thread(target=self._read, args=(process.stderr,), daemon=True).start()

    def _read(self, stream: typing.IO[bytes]) -> None:
        try:
            for raw in stream:
                with self._changed:
                    self._lines.append(raw.decode("utf-8", "backslashreplace").rstrip("\n"))
                    self._changed.notify_all()
        except (OSError, ValueError):  # the pipe was closed under the reader
            pass
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def mark(self) -> int:
        """Return how many lines have been read: wait for lines after this mark."""
        with self._changed:
            return len(self._lines)

    def wait_for(self, text: str, *, after: int = 0, seconds: float = _STOP_SECONDS) -> int:
        """Return the index of the first line from `after` on that contains `text`, waiting
        up to `seconds` for it; fail if it does not come."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: any(text in line for line in self._lines[after:]) or self._ended,
                seconds,
            )
            matches = [i for i, line in enumerate(self._lines) if i >= after and text in line]
            if not found or not matches:
                raise AssertionError(f"no stderr line with {text!r}; got {self._lines[after:]}")
            return matches[0]

    def line(self, index: int) -> str:
        """Return the line at `index`."""
        with self._changed:
            return self._lines[index]

    def until_exit(self, seconds: float = _STOP_SECONDS) -> list[str]:
        """Return every line, once the process has closed stderr (it exited)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._ended, seconds):
                raise AssertionError("the proxy did not close its stderr")
            return list(self._lines)


class Relay:
    """A TCP relay to a real server that the test can cut (close every connection and refuse
    new ones) and restore, on the same port: a store link that fails and comes back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        # The first listener takes a port of its own; a restore binds that port again.
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()

    def restore(self) -> None:
        """Accept connections again."""
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close every connection and stop listening: the store is unreachable."""
        with self._lock:
            sockets, self._open = self._open, []
        if self._listener is not None:  # shutdown wakes the accepting thread; close alone not
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, _STOP_SECONDS)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
