"""B22: a server whose `send` raises once its client has gone (ASGI 2.4: an `OSError`) on the
last message of a response streamed past the storable size: the status went out, so the effect
happened; the key keeps "response not stored" (410 to a retry), never released for a retry to
run the effect again. Called in-process, as such a server calls the app."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.stores.memory import AsyncMemoryStore

SECRET = b"a secret of at least 16 bytes"
LIMIT = 1024  # max_response_size: the first 4096 bytes stream at once


class Streaming:
    """Streams a response past the storable size in two body messages; counts its runs."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        self.runs += 1  # the effect
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"a" * 4096, "more_body": True})
        await send({"type": "http.response.body", "body": b"b" * 100})


async def _post(middleware: IdempotencyMiddleware, *, fail_last: bool) -> list[dict[str, Any]]:
    """POST with the key once; the server's `send` raises on the last body message if
    `fail_last` (its client has gone); return what the server was sent."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/pay", "raw_path": b"/pay",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("s", 80),
        "headers": [(b"idempotency-key", b'"k-1"'), (b"authorization", b"Bearer caller")],
    }  # fmt: skip
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # no disconnect is heard
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if fail_last and message["type"] == "http.response.body" and not message.get("more_body"):
            raise OSError("the client has gone")
        sent.append(message)

    with contextlib.suppress(OSError):  # the app lets the server's error through
        await middleware(scope, receive, send)
    return sent


def test_b22_a_send_that_fails_on_the_last_streamed_message_keeps_the_key() -> None:
    """The first request's last message fails to reach its client; the retry gets 410
    (response not stored), and the app ran once."""
    app = Streaming()
    middleware = IdempotencyMiddleware(
        app, store=AsyncMemoryStore(), max_response_size=LIMIT, scope_secret=SECRET
    )

    async def main() -> list[dict[str, Any]]:
        await _post(middleware, fail_last=True)
        return await _post(middleware, fail_last=False)

    retry = asyncio.run(main())
    assert retry[0]["status"] == 410
    assert app.runs == 1
