"""One small API on each framework, its routes marked through that framework's integration.

Every app has four POST routes answering 201 `{"n": <call number>}`:
- `/required`: marked `required=True`;
- `/marked`: marked with the defaults;
- `/plain`: not marked;
- `/exempt`: marked `exempt=True`.
Handler calls are counted in the `Recorder`.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore

ASGI_FRAMEWORKS = ["starlette", "fastapi", "litestar"]
WSGI_FRAMEWORKS = ["flask", "django"]
FRAMEWORKS = [*ASGI_FRAMEWORKS, *WSGI_FRAMEWORKS]
PATHS = ["/required", "/marked", "/plain", "/exempt"]


class Recorder:
    """Counts handler calls per path; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    def count(self, path: str) -> int:
        """Count a call of `path`; return its call number."""
        with self._lock:
            self.calls[path] += 1
            return self.calls[path]


def starlette_app(recorder: Recorder, **install: Any) -> Any:
    """The API on Starlette, marked with the Starlette decorator."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from retrysafe.integrations.starlette import idempotency
    from retrysafe.integrations.starlette import install as install_

    def handler(path: str) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            return JSONResponse({"n": recorder.count(path)}, status_code=201)

        return endpoint

    routes = [
        Route("/required", idempotency(required=True)(handler("/required")), methods=["POST"]),
        Route("/marked", idempotency()(handler("/marked")), methods=["POST"]),
        Route("/plain", handler("/plain"), methods=["POST"]),
        Route("/exempt", idempotency(exempt=True)(handler("/exempt")), methods=["POST"]),
        Mount(
            "/v1",
            routes=[
                Route(
                    "/required",
                    idempotency(required=True)(handler("/v1/required")),
                    methods=["POST"],
                )
            ],
        ),
    ]
    app = Starlette(routes=routes)
    install_(app, store=AsyncMemoryStore(), **install)
    return app


def fastapi_app(recorder: Recorder, **install: Any) -> Any:
    """The API on FastAPI, marked with the dependency (and a router-level one)."""
    from fastapi import APIRouter, Depends, FastAPI

    from retrysafe.integrations.fastapi import idempotency
    from retrysafe.integrations.fastapi import install as install_

    app = FastAPI()

    @app.post("/required", status_code=201, dependencies=[Depends(idempotency(required=True))])
    async def required() -> dict[str, int]:
        return {"n": recorder.count("/required")}

    @app.post("/marked", status_code=201)
    async def marked(key: str | None = Depends(idempotency())) -> dict[str, int]:
        return {"n": recorder.count("/marked")}

    @app.post("/plain", status_code=201)
    async def plain() -> dict[str, int]:
        return {"n": recorder.count("/plain")}

    @app.post("/exempt", status_code=201, dependencies=[Depends(idempotency(exempt=True))])
    async def exempt() -> dict[str, int]:
        return {"n": recorder.count("/exempt")}

    router = APIRouter(dependencies=[Depends(idempotency(required=True))])

    @router.post("/required", status_code=201)
    async def v1_required() -> dict[str, int]:
        return {"n": recorder.count("/v1/required")}

    app.include_router(router, prefix="/v1")
    install_(app, store=AsyncMemoryStore(), **install)
    return app


def litestar_app(recorder: Recorder, **install: Any) -> Any:
    """The API on Litestar, marked in each handler's `opt` (and a router's)."""
    from litestar import Litestar, Router, post

    from retrysafe.integrations.litestar import RouteSettings, idempotency
    from retrysafe.integrations.litestar import install as install_

    @post("/required", opt=idempotency(required=True))
    async def required() -> dict[str, int]:
        return {"n": recorder.count("/required")}

    @post("/marked", opt={"idempotency": RouteSettings()})
    async def marked() -> dict[str, int]:
        return {"n": recorder.count("/marked")}

    @post("/plain")
    async def plain() -> dict[str, int]:
        return {"n": recorder.count("/plain")}

    @post("/exempt", opt=idempotency(exempt=True))
    async def exempt() -> dict[str, int]:
        return {"n": recorder.count("/exempt")}

    @post("/required")
    async def v1_required() -> dict[str, int]:
        return {"n": recorder.count("/v1/required")}

    v1 = Router("/v1", route_handlers=[v1_required], opt=idempotency(required=True))
    app = Litestar([required, marked, plain, exempt, v1])
    return install_(app, store=AsyncMemoryStore(), **install)


def flask_app(recorder: Recorder, **install: Any) -> Any:
    """The API on Flask, marked with the view decorator (above and below `@app.post`)."""
    from flask import Blueprint, Flask, Response

    from retrysafe.integrations.flask import idempotency
    from retrysafe.integrations.flask import install as install_

    app = Flask(__name__)

    def created(path: str) -> Response:
        body = json.dumps({"n": recorder.count(path)})
        return Response(body, status=201, content_type="application/json")

    @app.post("/required")
    @idempotency(required=True)
    def required() -> Response:
        return created("/required")

    @idempotency()
    @app.post("/marked")
    def marked() -> Response:
        return created("/marked")

    @app.post("/plain")
    def plain() -> Response:
        return created("/plain")

    @app.post("/exempt")
    @idempotency(exempt=True)
    def exempt() -> Response:
        return created("/exempt")

    v1 = Blueprint("v1", __name__, url_prefix="/v1")

    @v1.post("/required")
    @idempotency(required=True)
    def v1_required() -> Response:
        return created("/v1/required")

    app.register_blueprint(v1)
    install_(app, store=MemoryStore(), **install)
    return app


def django_app(recorder: Recorder, **install: Any) -> Any:
    """The API on Django (WSGI), marked with the view decorator."""
    from tests.integrations import django_project

    django_project.RECORDER = recorder
    from retrysafe.integrations.django import get_wsgi_application

    return get_wsgi_application(store=MemoryStore(), **install)


BUILDERS = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
    "flask": flask_app,
    "django": django_app,
}
