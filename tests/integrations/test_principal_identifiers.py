"""Flask's `principal()` names a user only by a stable identifier (B8, B35).

An app's own authentication hook may put a guest object in `g.user` for visitors who are not
logged in; with no identifier it names no one, so a keyed request from a visitor is refused
(`anonymous="reject"`) rather than every visitor sharing one scope. A user object with nothing
stable to name it by is a configuration error, answered with the 500 `scope-unresolved`
problem. On wsgiref, on the SQLite store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from flask import Flask, g, request

from retrysafe import open_store
from retrysafe.integrations.flask import Idempotency
from tests.http.conftest import is_problem
from tests.integrations.servers import WsgiServer


@dataclass
class Guest:
    """What the app's hook sets for a visitor who is not logged in."""

    id: None = None
    display_name: str = "Guest"


@dataclass
class Member:
    """A logged-in user, named by the app by something retrysafe does not know (`uid`)."""

    uid: str
    display_name: str


TOKENS = {"Bearer alice": Member("u1", "Alice")}


@pytest.fixture
def orders(tmp_path: Path) -> Iterator[tuple[httpx.Client, list[str]]]:
    """An app whose hook sets `g.user` to a `Member` or a `Guest`; `principal=` reads it."""
    runs: list[str] = []
    app = Flask(__name__)

    @app.before_request
    def authenticate() -> None:
        g.user = TOKENS.get(request.headers.get("Authorization", ""), Guest())

    @app.post("/orders")
    def order() -> tuple[dict[str, str], int]:
        runs.append(g.user.display_name)
        return {"order_for": g.user.display_name}, 201

    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    Idempotency(
        app,
        store=store,
        principal=lambda: g.user,
        scope_secret="0123456789abcdef0123",
        namespace="ids-" + uuid.uuid4().hex[:8],
    )
    server = WsgiServer(app)
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            yield client, runs
    finally:
        server.stop()
        store.close()


def test_b8_b35_visitors_a_guest_object_stands_for_are_no_caller(
    orders: tuple[httpx.Client, list[str]],
) -> None:
    """Two logged-out visitors (a `Guest` with an empty id, no `is_authenticated`) with one key
    are refused with `scope-missing`: never one scope where one replays the other's order."""
    client, runs = orders
    key = f'"{uuid.uuid4()}"'
    for visitor in ("1", "2"):
        answer = client.post(
            "/orders", headers={"Idempotency-Key": key, "Cookie": f"s={visitor}"}, json={}
        )
        assert is_problem(answer, 400, "scope-missing"), answer.text
    assert runs == []


def test_b8_a_user_with_no_stable_identifier_fails_closed(
    orders: tuple[httpx.Client, list[str]],
) -> None:
    """A logged-in user object with no `pk`, `id`, `identity`, `username`, `sub` nor
    `get_id()` gets the 500 `scope-unresolved` problem saying what to add; nothing runs."""
    client, runs = orders
    headers = {"Idempotency-Key": f'"{uuid.uuid4()}"', "Authorization": "Bearer alice"}
    answer = client.post("/orders", headers=headers, json={})
    assert is_problem(answer, 500, "scope-unresolved"), answer.text
    assert "Member" in answer.json()["detail"]
    assert runs == []
