"""Route patterns name the path as the app routes it, under a mount prefix too (B5, B6, B10).

A mounted app has its prefix apart: the ASGI `root_path` (which servers and Starlette's
`Mount` also keep at the start of `path`), the WSGI `SCRIPT_NAME`. The middleware's `routes=`
patterns match the rest, as the app's own routes do; a pattern written for the whole path,
prefix included, still decides where the rest matches only a catch-all (`**`) or nothing.
Each face runs on a real server under a real mount: the ASGI middleware inside Starlette's
`Mount` on uvicorn, the WSGI middleware inside Werkzeug's `DispatcherMiddleware` on waitress.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from retrysafe import asgi, wsgi
from retrysafe.asgi import RouteSettings
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from tests.http.conftest import WsgiServer, is_problem, make_client
from tests.servers import AsgiServer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

REQUIRED = RouteSettings(required=True)
Routes = Mapping[str, RouteSettings | None]


class Mounted:
    """An app mounted at `/api` behind a face's middleware, on a real server; it answers every
    POST 201 and counts the calls of each path as the app routes it."""

    def __init__(self, face: str, routes: Routes) -> None:
        self.calls: Counter[str] = Counter()
        if face == "asgi":
            middleware = asgi.IdempotencyMiddleware(
                self._asgi_app, store=AsyncMemoryStore(), routes=routes
            )
            self._server: AsgiServer | WsgiServer = AsgiServer(
                Starlette(routes=[Mount("/api", app=middleware)])
            )
        else:
            inner = wsgi.IdempotencyMiddleware(self._wsgi_app, store=MemoryStore(), routes=routes)
            self._server = WsgiServer(DispatcherMiddleware(NotFound(), {"/api": inner}))
        self.client = make_client(self._server.url)

    async def _asgi_app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls[scope["path"].removeprefix(scope["root_path"])] += 1
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    def _wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.calls[environ["PATH_INFO"]] += 1
        start_response("201 Created", [("Content-Length", "4")])
        return [b"done"]

    def post(self, path: str, key: str | None = None) -> httpx.Response:
        """POST a small JSON body to `path`, with `Idempotency-Key: key` if given."""
        headers = {} if key is None else {"Idempotency-Key": key}
        return self.client.post(path, json={"a": 1}, headers=headers)

    def close(self) -> None:
        """Stop the client and the server."""
        self.client.close()
        self._server.stop()


@pytest.fixture
def mount() -> Iterator[Callable[[str, Routes], Mounted]]:
    """A factory: an app mounted at `/api` behind `face`'s middleware with `routes`."""
    started: list[Mounted] = []

    def make(face: str, routes: Routes) -> Mounted:
        started.append(Mounted(face, routes))
        return started[-1]

    yield make
    for mounted in started:
        mounted.close()


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
@pytest.mark.parametrize(
    "routes",
    [
        {"/payments": REQUIRED, "**": None},
        {"/api/payments": REQUIRED, "**": None},
    ],
    ids=["routed-path", "whole-path"],
)
def test_b6_b10_route_patterns_hold_under_a_mount_prefix(
    face: str, routes: Routes, mount: Callable[[str, Routes], Mounted]
) -> None:
    """Under the prefix `/api`, the route required by a pattern naming its routed path (or its
    whole path) asks for a key, runs once per key and replays; the catch-all's uncovered
    path runs on every request."""
    app = mount(face, routes)
    assert is_problem(app.post("/api/payments"), 400, "key-required")
    first, again = app.post("/api/payments", "k1"), app.post("/api/payments", "k1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    for _ in range(2):
        other = app.post("/api/other", "k2")
        assert other.status_code == 201
        assert "idempotent-replayed" not in other.headers
    assert app.calls == {"/payments": 1, "/other": 2}


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b5_a_pattern_of_the_routed_path_wins_over_one_of_the_whole_path(
    face: str, mount: Callable[[str, Routes], Mounted]
) -> None:
    """A pattern that names the routed path decides, even when one naming the whole path
    comes first: `/payments` is not covered under `/api`, however `/api/**` is configured."""
    app = mount(face, {"/api/**": REQUIRED, "/payments": None})
    assert app.post("/api/payments").status_code == 201
    for _ in range(2):
        assert "idempotent-replayed" not in app.post("/api/payments", "k").headers
    assert is_problem(app.post("/api/other"), 400, "key-required")
    assert app.calls == {"/payments": 3}


@pytest.mark.parametrize(
    ("path", "root_path", "routed"),
    [
        ("/api/payments", "/api", "/payments"),
        ("/api", "/api", "/"),
        ("/apiary/payments", "/api", "/apiary/payments"),
        ("/payments", "/api", "/payments"),
        ("/payments", "", "/payments"),
    ],
)
def test_b5_the_routed_path_drops_the_prefix_at_a_segment_end(
    path: str, root_path: str, routed: str
) -> None:
    """The ASGI routed path is `path` without `root_path` where `path` starts with it as whole
    segments (as Starlette routes it); the whole path stays `path`."""
    from retrysafe._http.asgi_io import route_path

    found = route_path({"path": path, "root_path": root_path})
    assert (str(found), found.whole) == (routed, path)
