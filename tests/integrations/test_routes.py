"""Per-route marks through each framework's integration, on real servers (B6, B10)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from retrysafe.asgi import RouteSettings
from tests.integrations.conftest import Running, new_key

Start = Callable[..., Running]


def is_problem(response: httpx.Response, status: int, slug: str) -> bool:
    """Return whether `response` is retrysafe's problem+json `slug` with `status`."""
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/problem+json"
        and response.json()["type"].endswith("#" + slug)
    )


def test_b6_required_route_without_key_is_400_and_not_run(framework: str, start: Start) -> None:
    """A route marked required answers 400 problem+json without a key; its handler never runs."""
    app = start(framework)
    for path in ("/required", "/v1/required"):
        response = app.post(path)
        assert is_problem(response, 400, "key-required"), response.text
        assert app.recorder.calls[path] == 0
        assert app.post(path, new_key()).status_code == 201
        assert app.recorder.calls[path] == 1


def test_b10_marked_route_replays_and_runs_once(framework: str, start: Start) -> None:
    """A marked route runs once per key; the retry replays the first response, marked replayed."""
    app = start(framework)
    key = new_key()
    first = app.post("/marked", key)
    second = app.post("/marked", key)
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert app.recorder.calls["/marked"] == 1


def test_unmarked_route_runs_normally(framework: str, start: Start) -> None:
    """An unmarked route runs without a key even though another route requires one."""
    app = start(framework)
    assert app.post("/plain").status_code == 201
    assert app.post("/plain").status_code == 201
    assert app.recorder.calls["/plain"] == 2
    key = new_key()
    app.post("/plain", key)
    assert app.post("/plain", key).headers["idempotent-replayed"] == "true"
    assert app.recorder.calls["/plain"] == 3


def test_exempt_route_is_never_tracked(framework: str, start: Start) -> None:
    """A route marked exempt runs on every request, even with a repeated key."""
    app = start(framework)
    key = new_key()
    responses = [app.post("/exempt", key) for _ in range(2)]
    assert [r.status_code for r in responses] == [201, 201]
    assert all("idempotent-replayed" not in r.headers for r in responses)
    assert app.recorder.calls["/exempt"] == 2


def test_b6_path_patterns_cover_unmarked_routes_and_marks_win(framework: str, start: Start) -> None:
    """Path patterns apply to unmarked routes; a route's own mark overrides its pattern."""
    app = start(
        framework,
        routes={"/plain": RouteSettings(required=True), "/marked": None, "/exempt": None},
    )
    assert is_problem(app.post("/plain"), 400, "key-required")
    assert app.recorder.calls["/plain"] == 0
    key = new_key()
    app.post("/marked", key)
    assert app.post("/marked", key).headers["idempotent-replayed"] == "true"
    assert app.recorder.calls["/marked"] == 1


def test_b5_middleware_options_apply_to_marked_routes(framework: str, start: Start) -> None:
    """Options given to install (a scope header here) apply under the routes' marks."""
    app = start(framework, scope_header="X-API-Key")
    key = new_key()
    app.client.post("/marked", headers={"Idempotency-Key": key, "X-API-Key": "a"}, json={})
    app.client.post("/marked", headers={"Idempotency-Key": key, "X-API-Key": "b"}, json={})
    replay = app.client.post("/marked", headers={"Idempotency-Key": key, "X-API-Key": "a"}, json={})
    assert replay.headers["idempotent-replayed"] == "true"
    assert app.recorder.calls["/marked"] == 2
