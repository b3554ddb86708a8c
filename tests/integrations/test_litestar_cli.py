"""Litestar's own CLI on apps guarded by retrysafe: `litestar --app module:app routes` lists
the routes, and `litestar run` serves the app with the middleware in it (B10)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integrations.conftest import CALLER, new_key
from tests.servers import announced

_HANDLER = """
from litestar import Litestar, post
from litestar.params import JSONBody
from retrysafe import open_async_store
from retrysafe.integrations.litestar import IdempotencyPlugin, idempotency, install

calls = []


@post("/payments", opt=idempotency(required=True))
async def create_payment(data: JSONBody[dict[str, int]]) -> dict[str, int]:
    calls.append(data)
    return {"call": len(calls), **data}


"""
APPS = {
    "plugin": _HANDLER
    + (
        "app = Litestar([create_payment], "
        'plugins=[IdempotencyPlugin(store=open_async_store("memory://"))])\n'
    ),
    "install": _HANDLER
    + 'app = install(Litestar([create_payment]), store=open_async_store("memory://"))\n',
}
"""The two ways docs/frameworks.md installs retrysafe, as a module a user would write."""


def litestar(app_dir: Path, *arguments: str) -> subprocess.Popen[str]:
    """Start `litestar --app payments_app:app ARGUMENTS` in `app_dir`."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-m", "litestar", "--app", "payments_app:app", *arguments],
        cwd=app_dir,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(params=list(APPS))
def app_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A directory holding `payments_app.py`, installed with the plugin or with `install`."""
    (tmp_path / "payments_app.py").write_text(APPS[str(request.param)])
    return tmp_path


def test_litestar_routes_lists_the_guarded_app(app_dir: Path) -> None:
    """`litestar --app payments_app:app routes` exits 0 and lists the handler."""
    process = litestar(app_dir, "routes")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "/payments" in output
    assert "create_payment" in output


@pytest.fixture
def running(app_dir: Path) -> Iterator[str]:
    """`litestar run` serving the app on a loopback port of its own; stopped afterwards."""
    process = litestar(app_dir, "run", "--host", "127.0.0.1", "--port", "0")
    try:
        assert process.stdout is not None
        # uvicorn names the port it bound, once the app has started.
        yield announced(process.stdout, r"Uvicorn running on (http://\S+)", 30)[1]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=15)


def test_b6_b10_litestar_run_serves_the_app_with_the_middleware(running: str) -> None:
    """Under `litestar run` the route requires its key and replays a retry: the handler ran
    once for the key."""
    with httpx.Client(base_url=running, headers=CALLER, timeout=15) as client:
        assert client.post("/payments", json={"amount": 5}).status_code == 400  # B6
        key = {"Idempotency-Key": new_key()}
        first = client.post("/payments", headers=key, json={"amount": 5})
        second = client.post("/payments", headers=key, json={"amount": 5})
        assert first.status_code == 201
        assert first.json() == {"call": 1, "amount": 5}
        assert second.headers["idempotent-replayed"] == "true"
        assert second.content == first.content
        third = client.post("/payments", headers={"Idempotency-Key": new_key()}, json={"amount": 5})
        assert third.json() == {"call": 2, "amount": 5}
