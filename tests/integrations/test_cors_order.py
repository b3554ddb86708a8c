"""CORS and the idempotency middleware (B10): a browser reads a replay only if it carries
`Access-Control-Allow-Origin`, which `CORSMiddleware` adds to each response it sees. Outside
the idempotency middleware it answers every try, replays included; inside, replays lack it,
and `install` says so when the app builds its stack. FastAPI on uvicorn, the memory store."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from retrysafe.integrations.fastapi import install
from retrysafe.stores.memory import AsyncMemoryStore
from tests.integrations.servers import AsgiServer

ORIGIN = "https://shop.example"
HEADERS = {"Origin": ORIGIN, "Authorization": "Bearer alice", "Idempotency-Key": "k-1"}


async def pay() -> dict[str, int]:
    """A payment."""
    return {"paid": 1}


@contextmanager
def served(*, cors_after_install: bool) -> Iterator[httpx.Client]:
    """The app with CORS added after `install` (outside it) or before (inside it)."""
    app = FastAPI()
    app.post("/payments", status_code=201)(pay)
    if not cors_after_install:
        app.add_middleware(CORSMiddleware, allow_origins=[ORIGIN])
    install(app, store=AsyncMemoryStore(), scope_secret="s" * 32, required=True)
    if cors_after_install:
        app.add_middleware(CORSMiddleware, allow_origins=[ORIGIN])
    server = AsgiServer(app)
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            yield client
    finally:
        server.stop()


def test_b10_cors_outside_the_middleware_answers_replays_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Added after `install`, CORS puts its header on the replay, and nothing is warned."""
    with (
        caplog.at_level(logging.WARNING, logger="retrysafe"),
        served(cors_after_install=True) as client,
    ):
        client.post("/payments", headers=HEADERS)
        replay = client.post("/payments", headers=HEADERS)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["access-control-allow-origin"] == ORIGIN
    assert "CORSMiddleware runs inside" not in caplog.text


def test_b10_cors_inside_the_middleware_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    """Added before `install`, CORS never sees a replay: the replay lacks its header, and
    the app's first request logs a warning that says where to add it."""
    with (
        caplog.at_level(logging.WARNING, logger="retrysafe"),
        served(cors_after_install=False) as client,
    ):
        first = client.post("/payments", headers=HEADERS)
        replay = client.post("/payments", headers=HEADERS)
    assert first.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in replay.headers
    assert "CORSMiddleware runs inside the idempotency middleware" in caplog.text
