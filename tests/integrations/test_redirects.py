"""A router's trailing-slash redirect (307, 308) is not the key's outcome (B18).

FastAPI (Starlette's `redirect_slashes`) answers a POST to `/payments/` with 307 to `/payments`,
and Flask (Werkzeug's strict slashes) a POST to `/payments` with 308 to `/payments/`, before
any view runs. A client that follows redirects (httpx, requests, `curl -L`) sends the same
request there with the same key. Stored, the redirect would use the key up: the request it
points to, another request-target, would get 422 key-mismatch for as long as the key lives,
and never run. FastAPI runs on uvicorn, followed by httpx; Flask's test client follows its
redirect itself.
"""

from __future__ import annotations

import httpx
from fastapi import Depends, FastAPI
from flask import Flask

from retrysafe.integrations.fastapi import idempotency, install
from retrysafe.integrations.flask import Idempotency
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from tests.integrations.conftest import CALLER
from tests.integrations.servers import AsgiServer


def test_b18_a_followed_307_redirect_runs_the_request_it_points_to_once() -> None:
    """FastAPI: the 307 is answered, not stored; the followed request runs once, and a retry
    of the whole exchange replays it."""
    runs: list[int] = []
    app = FastAPI()

    @app.post("/payments", status_code=201, dependencies=[Depends(idempotency(required=True))])
    async def pay() -> dict[str, int]:
        runs.append(1)
        return {"n": len(runs)}

    install(app, store=AsyncMemoryStore())
    headers = {"Idempotency-Key": "k", **CALLER}
    server = AsgiServer(app)
    try:
        with httpx.Client(base_url=server.url, follow_redirects=True, timeout=15) as client:
            first = client.post("/payments/", json={"a": 1}, headers=headers)
            again = client.post("/payments/", json={"a": 1}, headers=headers)
    finally:
        server.stop()
    assert [r.status_code for r in first.history] == [307]
    assert (first.status_code, first.json()) == (201, {"n": 1})
    assert (again.status_code, again.json()) == (201, {"n": 1})
    assert again.headers["idempotent-replayed"] == "true"
    assert runs == [1]


def test_b18_a_followed_308_redirect_runs_the_request_it_points_to_once() -> None:
    """Flask: the same with Werkzeug's 308 to the slashed URL."""
    runs: list[int] = []
    app = Flask(__name__)
    Idempotency(app, store=MemoryStore())

    @app.post("/payments/")
    def pay() -> tuple[dict[str, int], int]:
        runs.append(1)
        return {"n": len(runs)}, 201

    client = app.test_client()
    headers = {"Idempotency-Key": "k", **CALLER}
    first = client.post("/payments", json={"a": 1}, headers=headers, follow_redirects=True)
    again = client.post("/payments", json={"a": 1}, headers=headers, follow_redirects=True)
    assert [r.status_code for r in first.history] == [308]
    assert (first.status_code, first.json) == (201, {"n": 1})
    assert (again.status_code, again.json) == (201, {"n": 1})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert runs == [1]
