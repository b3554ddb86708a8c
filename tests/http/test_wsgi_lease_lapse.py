"""B16, B17 under WSGI: a lease that lapses while its handler runs, and the takeovers it allows.

The heartbeat thread renews a sync handler's lease only when it gets the GIL and its process
runs: a C call holding the GIL longer than the lease (a regex), or a stopped process, lets the
lease lapse. Here the store's clock (a `ManualClock`, which every worker's store reads) is
moved past the lease while the handler is held on an event, which is what such a stop looks
like to the store and to the execution: no renewal lands, and a duplicate on another worker
takes the key over. Every takeover is logged and counted (`taken_over`), the late holder's
lapse too (`lease_lapsed`); a late holder that takes its claim back from a taker whose lease
ended too is a takeover, not a record the store lost (`restored`).
"""

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

from retrysafe import ManualClock, open_store
from retrysafe.wsgi import IdempotencyMiddleware
from tests.conftest import fresh_store_url
from tests.integrations.servers import WsgiServer

SECRET = b"a secret of at least 16 bytes"
LEASE = 30.0  # no renewal falls due in the test's real time: only the manual clock moves
HEADERS = {"Idempotency-Key": '"k"', "Authorization": "Bearer alice"}


class HeldApp:
    """Makes its effect (counted), then holds the calls named in `holds` until released."""

    def __init__(self, holds: int) -> None:
        self.effects = 0
        self.entered = [threading.Event() for _ in range(holds)]
        self.release = [threading.Event() for _ in range(holds)]
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        with self._lock:
            self.effects += 1
            effect = self.effects
        if effect <= len(self.entered):
            self.entered[effect - 1].set()
            self.release[effect - 1].wait(10)
        start_response("201 Created", [("Content-Type", "application/json")])
        return [json.dumps({"effect": effect}).encode()]

    def free(self) -> None:
        for event in self.release:
            event.set()


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store that the workers share."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        yield url


class Workers:
    """Worker processes, each its own middleware, store client and server, on one store."""

    def __init__(self, app: HeldApp, url: str, clock: ManualClock) -> None:
        self.app, self.url, self.clock = app, url, clock
        self._open: list[tuple[WsgiServer, Any, httpx.Client]] = []

    def start(self) -> tuple[IdempotencyMiddleware, httpx.Client]:
        store = open_store(self.url, clock=self.clock)
        middleware = IdempotencyMiddleware(
            self.app, store=store, lease=LEASE, wait=0, scope_secret=SECRET
        )
        server = WsgiServer(middleware)
        client = httpx.Client(base_url=server.url, timeout=20)
        self._open.append((server, store, client))
        return middleware, client

    def close(self) -> None:
        self.app.free()
        for server, store, client in self._open:
            client.close()
            server.stop()
            store.close()


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The WARNING and ERROR records of `retrysafe.http` (`caplog.records`)."""
    with caplog.at_level(logging.WARNING, logger="retrysafe.http"):
        yield caplog


def _logged(records: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in records.records if r.name == "retrysafe.http"]


def _events(records: pytest.LogCaptureFixture) -> list[str]:
    return [str(getattr(r, "retrysafe_event", "")) for r in _logged(records)]


def test_b16_a_wsgi_handler_held_past_its_lease_logs_the_lapse_and_the_takeover(
    store_url: str, records: pytest.LogCaptureFixture
) -> None:
    """Worker A's handler makes its effect, then its lease goes unrenewed past its end; worker
    B takes the key over (`taken_over`, WARNING) and runs the effect again. When A's handler
    ends, A logs the lapse (`lease_lapsed`) before its completion is fenced: the effect twice is
    never silent on either side."""
    app, clock = HeldApp(holds=1), ManualClock()
    workers = Workers(app, store_url, clock)
    try:
        first, to_first = workers.start()
        second, to_second = workers.start()
        with ThreadPoolExecutor(max_workers=1) as pool:
            holder = pool.submit(to_first.post, "/pay", headers=HEADERS)
            assert app.entered[0].wait(10)
            clock.advance(LEASE + 1)  # A held up (the GIL, SIGSTOP): no renewal landed
            taker = to_second.post("/pay", headers=HEADERS)
            assert _events(records) == ["taken_over"]
            app.release[0].set()
            held = holder.result(20)
        replay = to_second.post("/pay", headers=HEADERS)
    finally:
        workers.close()
    assert (taker.status_code, taker.json()) == (201, {"effect": 2})
    assert (held.status_code, held.json()) == (201, {"effect": 1})
    assert replay.json() == {"effect": 2}
    assert replay.headers["idempotent-replayed"] == "true"
    assert app.effects == 2
    assert _events(records) == ["taken_over", "lease_lapsed", "fenced"]
    taken, lapse, _ = _logged(records)
    assert taken.levelno == lapse.levelno == logging.WARNING
    assert getattr(taken, "idempotency_key", None) == getattr(lapse, "idempotency_key", None)
    assert "the operation runs again" in taken.getMessage().lower()
    assert "31.0 s without a renewal" in lapse.getMessage()
    assert (first.counters.lapsed, first.counters.fenced, first.counters.taken_over) == (1, 1, 0)
    assert (second.counters.taken_over, second.counters.lapsed) == (1, 0)


def test_b16_a_takeover_after_a_dead_worker_is_logged_and_counted(
    store_url: str, records: pytest.LogCaptureFixture
) -> None:
    """A worker stopped after its effect (its handler held, as SIGKILL or SIGSTOP would leave
    its claim: never renewed, never completed); once its lease ended, a retry on another worker
    runs the operation again: 201, logged at WARNING as `taken_over` and counted, never silent.
    A retry after that replays."""
    app, clock = HeldApp(holds=1), ManualClock()
    workers = Workers(app, store_url, clock)
    try:
        _, to_dead = workers.start()
        retrying, to_retrying = workers.start()
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(to_dead.post, "/pay", headers=HEADERS)
            assert app.entered[0].wait(10)
            clock.advance(LEASE + 1)
            retry = to_retrying.post("/pay", headers=HEADERS)
            replay = to_retrying.post("/pay", headers=HEADERS)
            events = _events(records)
            app.release[0].set()
    finally:
        workers.close()
    assert (retry.status_code, retry.json()) == (201, {"effect": 2})
    assert replay.headers["idempotent-replayed"] == "true"
    assert events == ["taken_over"]
    assert retrying.counters.snapshot()["taken_over"] == 1
    assert retrying.counters.replays == 1


def test_b16_a_double_lapse_is_a_takeover_not_a_record_the_store_lost(
    store_url: str, records: pytest.LogCaptureFixture
) -> None:
    """A's lease lapses and B takes the key over; then B's lapses too, and A's handler ends
    first. A's completion is fenced, claims the key back (a takeover of B's claim, not a record
    the store lost) and stores its outcome: logged as `taken_over`, never `restored`. B's late
    completion is then fenced, and every retry replays A's outcome."""
    app, clock = HeldApp(holds=2), ManualClock()
    workers = Workers(app, store_url, clock)
    try:
        first, to_first = workers.start()
        second, to_second = workers.start()
        with ThreadPoolExecutor(max_workers=2) as pool:
            a = pool.submit(to_first.post, "/pay", headers=HEADERS)
            assert app.entered[0].wait(10)
            clock.advance(LEASE + 1)
            b = pool.submit(to_second.post, "/pay", headers=HEADERS)
            assert app.entered[1].wait(10)
            clock.advance(LEASE + 1)
            app.release[0].set()
            held_a = a.result(20)
            app.release[1].set()
            held_b = b.result(20)
        replay = to_second.post("/pay", headers=HEADERS)
    finally:
        workers.close()
    assert (held_a.json(), held_b.json()) == ({"effect": 1}, {"effect": 2})
    assert replay.json() == {"effect": 1}
    assert replay.headers["idempotent-replayed"] == "true"
    events = _events(records)
    assert "restored" not in events
    assert events == ["taken_over", "lease_lapsed", "taken_over", "lease_lapsed", "fenced"]
    assert first.counters.restored == second.counters.restored == 0
    assert (first.counters.taken_over, first.counters.lapsed) == (1, 1)
    assert (second.counters.taken_over, second.counters.lapsed) == (1, 1)
    assert second.counters.fenced == 1
