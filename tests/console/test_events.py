"""Recent replays and mismatches in the console: an `EventRecorder` observing real requests
through the ASGI middleware writes them to the store (SQLite, PostgreSQL), and the console
over that store shows them in its JSON API and on its overview page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from retrysafe import Store, open_async_store, open_store
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.console import create_app
from retrysafe.observe.events import EVENTS_NAMESPACE, EventRecorder
from tests.conftest import fresh_store_url
from tests.console.conftest import TOKEN, Console
from tests.observe.test_events import GatedStore
from tests.servers import AsgiServer

WAIT = 10.0


async def _order(request: Request) -> JSONResponse:
    return JSONResponse({"order": await request.json()}, status_code=201)


@contextmanager
def _orders(store_url: str, recorder: EventRecorder) -> Iterator[Callable[[str], int]]:
    """Serve an order endpoint through the middleware with `recorder`; yield a function that
    POSTs an order of the given product under the key "order-7" and returns the status."""
    store = open_async_store(store_url)
    orders = Starlette(routes=[Route("/orders", _order, methods=["POST"])])
    server = AsgiServer(
        IdempotencyMiddleware(orders, store=store, observers=[recorder]), on_close=store.aclose
    )
    headers = {"authorization": "Bearer tenant-a", "idempotency-key": '"order-7"'}
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=WAIT) as client:
            yield lambda sku: client.post("/orders", json={"sku": sku}, headers=headers).status_code
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def recorded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Console]:
    """A console over a store where a recorder saw the orders' replay and mismatch."""
    with fresh_store_url(str(request.param), request, tmp_path) as store_url:
        recorder = EventRecorder(store_url)
        try:
            with _orders(store_url, recorder) as order:
                # Created, then the same again (a replay), then another body (a mismatch).
                assert [order(sku) for sku in ("tea", "tea", "coffee")] == [201, 201, 422]
            assert recorder.flush(WAIT)
        finally:
            recorder.close()
        store = open_store(store_url)
        server = AsgiServer(create_app(store, TOKEN))
        try:
            yield Console(server.url, store_url, keys=("order-7",))
        finally:
            server.stop()
            store.close()


def test_a_replay_and_a_mismatch_show_in_the_summary_newest_first(recorded: Console) -> None:
    """The summary's `events` lists the mismatch, then the replay, of the middleware's
    namespace and key, with a scope digest; the event records are not counted as records."""
    with recorded.client() as client:
        summary = client.get("/api/summary").json()
    events = summary["events"]
    assert events["recorded"] is True
    assert [e["decision"] for e in events["recent"]] == ["mismatch", "replay"]
    ((namespace, _row),) = ((r["namespace"], r) for r in summary["namespaces"])
    for event in events["recent"]:
        assert (event["face"], event["namespace"], event["key"]) == ("asgi", namespace, "order-7")
        assert re.fullmatch(r"[0-9a-f]{16}", event["scope_digest"])
        assert 0 <= event["age_seconds"] < 600
    assert namespace != EVENTS_NAMESPACE
    assert (summary["totals"]["done"], summary["totals"]["in_flight"]) == (1, 0)


def test_the_overview_page_lists_the_recorded_events(recorded: Console) -> None:
    """The overview's replays and mismatches section is a table of both events, not the note
    that nothing records them."""
    with recorded.client() as client:
        page = client.get("/").text
    section = page.split("<h2>Recent replays and mismatches</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<table>" in section
    assert section.count("order-7") == 2
    assert "mismatch" in section
    assert ">replay<" in section
    assert "Nothing records replays and mismatches" not in page


def test_without_a_recorder_the_page_says_how_to_turn_it_on(console: Console) -> None:
    """Over a store with no event records, the summary says none are recorded and the page
    names the observer that records them."""
    with console.client() as client:
        events = client.get("/api/summary").json()["events"]
        page = client.get("/").text
    assert (events["recorded"], events["recent"]) == (False, [])
    assert "EventRecorder" in events["detail"]
    assert "retrysafe.observe.events.EventRecorder(STORE_URL)" in page


def test_a_full_queue_drops_events_and_never_holds_up_a_request(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """With the recorder's writer held inside a store write and room for one event, three more
    replays through the middleware are all answered: one event waits, two are dropped and
    counted, and the held and the waiting one are written once the writer is let go."""
    with fresh_store_url("sqlite", request, tmp_path) as store_url:
        gated = GatedStore(open_store(store_url))
        recorder = EventRecorder(cast(Store, gated), queue_size=1)
        try:
            with _orders(store_url, recorder) as order:
                assert order("tea") == 201  # executed: not recorded
                assert order("tea") == 201  # the first replay: the writer takes it and is held
                assert gated.entered.wait(WAIT)
                assert [order("tea") for _ in range(3)] == [201] * 3
            held = recorder.stats()
            gated.gate.set()
            assert recorder.flush(WAIT)
        finally:
            gated.gate.set()
            recorder.close()
            gated.store.close()
    assert (held.written, held.queued, held.dropped) == (0, 1, 2)
    assert (recorder.stats().written, recorder.stats().dropped) == (2, 2)
