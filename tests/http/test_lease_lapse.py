"""B16, B17: under ASGI the lease is renewed on the event loop, so a live handler that blocks
its loop longer than the lease loses its claim to a duplicate on another worker, which runs the
effect again. The lapse is logged at WARNING, with the key, before the late completion is fenced."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrysafe import open_async_store
from retrysafe.asgi import IdempotencyMiddleware
from tests.conftest import fresh_store_url
from tests.http.conftest import make_client
from tests.servers import AsgiServer

SECRET = b"a secret of at least 16 bytes"
LEASE = 0.5


class BlockingApp:
    """Makes its effect (counted), then, on its first call only, blocks its event loop with
    sync work (as a sync SDK call inside `async def` does) until the test releases it."""

    def __init__(self) -> None:
        self.effects = 0
        self.blocked = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        with self._lock:
            self.effects += 1
            effect = self.effects
        if effect == 1:
            self.blocked.set()
            self.release.wait(10)  # blocks the loop: nothing else on it runs meanwhile
        body = json.dumps({"effect": effect}).encode()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=["redis", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store that two workers share."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        yield url


def _worker(app: BlockingApp, url: str, wait: float) -> tuple[AsgiServer, IdempotencyMiddleware]:
    """A server of its own (its own event loop and store client), as another process would be."""
    store = open_async_store(url)
    middleware = IdempotencyMiddleware(
        app, store=store, lease=LEASE, wait=wait, scope_secret=SECRET
    )
    return AsgiServer(middleware, on_close=store.aclose), middleware


def test_b16_a_handler_blocking_its_loop_past_the_lease_is_taken_over_and_logged(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler blocks worker A's loop after its effect; a duplicate on worker B waits for
    the lease to lapse, takes the key over and runs the effect again. A's client gets its own
    201, not the stored one; A logs the lapse (`lease_lapsed`, naming the key) and the fencing."""
    app = BlockingApp()
    first_server, first = _worker(app, store_url, wait=0)
    second_server, _ = _worker(app, store_url, wait=10)
    headers = {"Idempotency-Key": '"k"'}
    try:
        with (
            caplog.at_level(logging.WARNING, logger="retrysafe.http"),
            make_client(first_server.url) as to_first,
            make_client(second_server.url) as to_second,
            ThreadPoolExecutor(max_workers=1) as pool,
        ):
            holder = pool.submit(to_first.post, "/pay", headers=headers)
            assert app.blocked.wait(10)
            taker = to_second.post("/pay", headers=headers)  # waits until A's lease lapses
            app.release.set()
            held: httpx.Response = holder.result(10)
            replay = to_second.post("/pay", headers=headers)
    finally:
        app.release.set()
        first_server.stop()
        second_server.stop()
    assert taker.status_code == 201
    assert taker.json() == {"effect": 2}
    assert held.status_code == 201
    assert held.json() == {"effect": 1}  # the late holder's own response: not the stored one
    assert "idempotent-replayed" not in held.headers
    assert replay.json() == {"effect": 2}
    assert replay.headers["idempotent-replayed"] == "true"
    assert app.effects == 2
    assert first.counters.fenced == 1
    lapses = [r for r in caplog.records if getattr(r, "retrysafe_event", None) == "lease_lapsed"]
    assert len(lapses) == 1
    assert lapses[0].levelno == logging.WARNING
    assert lapses[0].name == "retrysafe.http"
    assert getattr(lapses[0], "idempotency_key", None) == "k"
    assert "another caller may have taken the key over" in lapses[0].getMessage().lower()
