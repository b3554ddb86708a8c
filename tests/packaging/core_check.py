"""Run inside a venv holding only `pip install retrysafe` (no extras): what the core must do.

Exits 0 and prints `core ok` when every check holds; any failure raises with a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import anyio

import retrysafe
from retrysafe.asgi import IdempotencyMiddleware as ASGIMiddleware
from retrysafe.wsgi import IdempotencyMiddleware as WSGIMiddleware

# The CLI's dependencies must not come with the core.
for name in ("typer", "rich", "uvicorn", "starlette", "httpx", "tenacity", "redis", "psycopg"):
    assert importlib.util.find_spec(name) is None, f"{name} was installed with the core"


def check_stores_and_decorator(url: str) -> None:
    """The store opens from its URL, and @idempotent runs a function once per key."""
    calls: list[str] = []
    store = retrysafe.open_store(url)

    @retrysafe.idempotent(store, key="order")
    def charge(order: str) -> dict[str, str]:
        calls.append(order)
        return {"order": order}

    assert charge("a") == {"order": "a"}
    assert charge("a") == {"order": "a"}
    assert calls == ["a"], calls
    store.close()


def check_asgi() -> None:
    """The ASGI middleware runs a keyed POST once and replays it."""
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})

    async def main() -> list[dict[str, Any]]:
        middleware = ASGIMiddleware(app, store=retrysafe.open_async_store("memory://"))
        sent: list[dict[str, Any]] = []
        for _ in range(2):
            scope = {
                "type": "http",
                "method": "POST",
                "path": "/p",
                "raw_path": b"/p",
                "query_string": b"",
                "headers": [(b"idempotency-key", b'"k1"'), (b"authorization", b"Bearer t")],
            }

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"{}", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            await middleware(scope, receive, send)
        return sent

    sent = anyio.run(main)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [201, 201], starts
    assert (b"idempotent-replayed", b"true") in starts[1]["headers"], starts[1]
    assert runs == [1], runs


def check_wsgi() -> None:
    """The WSGI middleware runs a keyed POST once and replays it."""
    runs: list[int] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made"]

    middleware = WSGIMiddleware(app, store=retrysafe.open_store("memory://"))
    statuses = []
    for _ in range(2):
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/p",
            "CONTENT_LENGTH": "2",
            "HTTP_IDEMPOTENCY_KEY": '"k1"',
            "HTTP_AUTHORIZATION": "Bearer t",
            "wsgi.input": io.BytesIO(b"{}"),
        }
        setup_testing_defaults(environ)

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
            statuses.append(status)

        body = b"".join(middleware(environ, start_response))
        assert body == b"made", body
    assert statuses == ["201 Created", "201 Created"], statuses
    assert runs == [1], runs


def error_of(call: Callable[[], object]) -> str:
    """Return the message of the ImportError or ConfigurationError that `call` raises."""
    try:
        call()
    except (ImportError, retrysafe.ConfigurationError) as error:
        return str(error)
    raise AssertionError(f"{call} worked without its extra")


def check_missing_extras() -> None:
    """A face whose extra is missing fails with one line that names the extra."""
    faces = {
        "retrysafe.client": "retrysafe[httpx]",
        "retrysafe.cli": "retrysafe[cli]",
        "retrysafe.proxy": "retrysafe[cli]",
        "retrysafe.demo": "retrysafe[cli]",
        "retrysafe.stores.redis": "retrysafe[redis]",
        "retrysafe.stores.postgres": "retrysafe[postgres]",
    }
    for module, extra in faces.items():
        message = error_of(lambda module=module: importlib.import_module(module))
        assert extra in message, (module, message)
        assert "\n" not in message, (module, message)
    for url, extra in (("redis://127.0.0.1:1/0", "redis"), ("postgresql://x@h/x", "postgres")):
        message = error_of(lambda url=url: retrysafe.open_store(url))
        assert f"retrysafe[{extra}]" in message, message
    command = Path(sys.executable).with_name("retrysafe")
    done = subprocess.run([command, "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1, done.stderr
    assert "retrysafe[cli]" in done.stderr, done.stderr


def check_version() -> None:
    """`retrysafe.__version__` is the installed wheel's own version (its one source)."""
    assert retrysafe.__version__ == metadata.version("retrysafe"), retrysafe.__version__


check_version()
check_stores_and_decorator("memory://")
with tempfile.TemporaryDirectory() as folder:
    check_stores_and_decorator(f"sqlite:///{folder}/keys.db")
check_asgi()
check_wsgi()
check_missing_extras()
print("core ok")
