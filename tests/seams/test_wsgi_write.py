"""WSGI apps that use write(): above max_response_size the first client gets every byte (B22)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest

import retrysafe
from retrysafe.wsgi import IdempotencyMiddleware
from tests.http.conftest import WsgiServer, make_client

WRITTEN = b"w" * 12_000
RETURNED = [b"r" * 5, b"R" * 5]


def writing_app(runs: itertools.count[int], *, returned: list[bytes]) -> Callable[..., Any]:
    """A WSGI app that writes most of its body with write(), then returns the rest."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        next(runs)
        environ["wsgi.input"].read()
        write = start_response("201 Created", [("Content-Type", "application/octet-stream")])
        for start in range(0, len(WRITTEN), 1000):
            write(WRITTEN[start : start + 1000])
        return returned

    return app


@pytest.mark.parametrize("returned", [RETURNED, []], ids=["write-then-iterable", "write-only"])
def test_b22_write_responses_above_the_limit_reach_the_client_whole(
    returned: list[bytes],
) -> None:
    """An app that writes 12,000 bytes with write() (and returns 10 more, or none) under a
    1,000-byte storable limit: the first client gets every byte; a retry gets the 410
    response-not-stored problem and the app does not run again."""
    runs = itertools.count()
    app = IdempotencyMiddleware(
        writing_app(runs, returned=list(returned)),
        store=retrysafe.open_store("memory://"),
        max_response_size=1000,
    )
    server = WsgiServer(app)
    key = {"Idempotency-Key": f'"{uuid.uuid4()}"', "Authorization": "Bearer ada"}
    try:
        with make_client(server.url) as client:
            first = client.post("/", content=b"{}", headers=key)
            again = client.post("/", content=b"{}", headers=key)
    finally:
        server.stop()
    assert first.status_code == 201
    assert first.content == WRITTEN + b"".join(returned)
    assert again.status_code == 410
    assert again.json()["type"].endswith("#response-not-stored")
    assert next(runs) == 1


def test_b22_write_responses_within_the_limit_are_stored_and_replayed() -> None:
    """Below the limit, a write() response is buffered, stored whole and replayed byte for byte."""
    runs = itertools.count()
    app = IdempotencyMiddleware(
        writing_app(runs, returned=list(RETURNED)), store=retrysafe.open_store("memory://")
    )
    server = WsgiServer(app)
    key = {"Idempotency-Key": f'"{uuid.uuid4()}"', "Authorization": "Bearer ada"}
    try:
        with make_client(server.url) as client:
            first = client.post("/", content=b"{}", headers=key)
            again = client.post("/", content=b"{}", headers=key)
    finally:
        server.stop()
    assert first.content == again.content == WRITTEN + b"".join(RETURNED)
    assert again.headers["idempotent-replayed"] == "true"
    assert next(runs) == 1
