"""How Starlette builds the middleware stack `install` adds to (B10): Starlette 0.41 and later
call each entry with the inner app by position, 0.40 (retrysafe's floor) by name, `app=`.
Every install works either way: before, the floor answered every request with a 500
(`bind() got an unexpected keyword argument 'app'`). `make test-lowest` runs the whole suite
on Starlette 0.40 itself; this calls the entries both ways on the installed Starlette."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

from retrysafe.integrations import fastapi as idempotent_fastapi
from retrysafe.integrations import starlette as idempotent_starlette
from retrysafe.stores.memory import AsyncMemoryStore
from retrysafe.transactions import fastapi as transactional_fastapi


async def inner(scope: Any, receive: Any, send: Any) -> None:
    """The app the installed middleware wraps."""


def installs() -> list[tuple[str, Any, Any]]:
    """(name, app, the middleware its install returned) for each install on its own app."""
    made = []
    app: Any = Starlette()
    made.append(("starlette", app, idempotent_starlette.install(app, store=AsyncMemoryStore())))
    app = FastAPI()
    made.append(("fastapi", app, idempotent_fastapi.install(app, store=AsyncMemoryStore())))
    app = FastAPI()
    middleware = transactional_fastapi.install(app, connect=lambda: None)  # never connects here
    made.append(("transactional", app, middleware))
    return made


@pytest.mark.parametrize("by_name", [False, True], ids=["by-position", "by-name"])
def test_b10_each_install_is_built_into_the_stack_however_starlette_passes_the_app(
    by_name: bool,
) -> None:
    for name, app, middleware in installs():
        factory, args, kwargs = app.user_middleware[-1]
        built = factory(*args, app=inner, **kwargs) if by_name else factory(inner, *args, **kwargs)
        assert built is middleware, name
        assert middleware.app is inner, name
