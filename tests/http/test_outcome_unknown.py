"""The middleware's `OUTCOME_UNKNOWN` extension, which the proxy uses (B38): the client is
answered at once, the claim is kept, and the app's later response (else the unknown outcome it
named) is stored, whether the app returns, raises or is cancelled."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from retrysafe._http import Response
from retrysafe._http.outcome import decode_outcome
from retrysafe._record import State
from retrysafe.asgi import OUTCOME_UNKNOWN, IdempotencyMiddleware
from retrysafe.stores.memory import AsyncMemoryStore
from tests.http.conftest import CALLER

ANSWER = Response(504, [(b"content-type", b"text/plain")], b"not yet")
OTHERWISE = Response(502, [(b"content-type", b"text/plain")], b"unknown")


class Unknowing(IdempotencyMiddleware):
    """The middleware with the extension offered, as `retrysafe.proxy` builds it."""

    outcome_unknown = True


def _scope() -> dict[str, Any]:
    headers = [(b"authorization", CALLER.encode()), (b"idempotency-key", b'"k"')]
    return {"type": "http", "method": "POST", "path": "/x", "query_string": b"", "headers": headers}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _run(app: Any, store: AsyncMemoryStore, *, cancel: bool = False) -> list[Any]:
    """Run one request through `Unknowing(app)`; return what the client was sent."""
    sent: list[Any] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message.get("status", message.get("body")))

    middleware = Unknowing(app, store=store, scope_secret=b"0123456789abcdef")
    async with anyio.create_task_group() as group:
        group.start_soon(middleware, _scope(), _receive, send)
        if cancel:
            await app.waiting.wait()
            group.cancel_scope.cancel()
    return sent


async def _record(store: AsyncMemoryStore) -> tuple[State, int, bytes]:
    (record,) = [r for r in await store.list_records() if r.identity.namespace == "http"]
    assert record.outcome is not None
    outcome = decode_outcome(record.outcome)
    return record.state, outcome.status, outcome.body


class App:
    """An app that says its outcome is unknown, then `ends` as told."""

    def __init__(self, ends: str) -> None:
        self.ends = ends
        self.waiting = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await scope["extensions"][OUTCOME_UNKNOWN](ANSWER, OTHERWISE)
        if self.ends == "answers":
            await send({"type": "http.response.start", "status": 201, "headers": []})
            await send({"type": "http.response.body", "body": b"late"})
        elif self.ends == "raises":
            raise RuntimeError("the upstream broke")
        elif self.ends == "hangs":
            self.waiting.set()
            await anyio.sleep_forever()


@pytest.mark.anyio
async def test_b38_the_late_answer_is_stored_and_not_sent() -> None:
    store = AsyncMemoryStore()
    assert await _run(App("answers"), store) == [504, b"not yet"]
    assert await _record(store) == (State.DONE, 201, b"late")


@pytest.mark.anyio
@pytest.mark.parametrize("ends", ["returns", "raises"])
async def test_b38_an_app_ending_without_an_answer_stores_the_unknown_outcome(ends: str) -> None:
    store = AsyncMemoryStore()
    assert await _run(App(ends), store) == [504, b"not yet"]
    assert await _record(store) == (State.DONE, 502, b"unknown")


@pytest.mark.anyio
async def test_b40_a_cancelled_app_still_stores_the_unknown_outcome() -> None:
    """Cancelled (a forced shutdown): the claim is not released, the unknown outcome is kept."""
    store = AsyncMemoryStore()
    assert await _run(App("hangs"), store, cancel=True) == [504, b"not yet"]
    assert await _record(store) == (State.DONE, 502, b"unknown")


@pytest.mark.anyio
async def test_b38_the_extension_is_offered_only_when_asked() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(OUTCOME_UNKNOWN in scope.get("extensions", {}))
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: dict[str, Any]) -> None:
        pass

    middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore(), scope_secret=b"0" * 16)
    await middleware(_scope(), _receive, send)
    assert seen == [False]
