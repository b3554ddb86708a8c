"""The plugin's tests run sample projects with `pytester`, the way a user's suite runs.

Each test module enables pytester itself (`pytest_plugins`, which only the root conftest may set).

`SAMPLE_APP` is the small project they test: a payments app as ASGI (Starlette) and as WSGI
(Flask), each with and without the retrysafe middleware, and an `@idempotent` function.
"""

from __future__ import annotations

import textwrap

import pytest

SAMPLE_APP = textwrap.dedent(
    '''
    """A payments app, as users write them, retry-safe and not."""

    from flask import Flask
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from retrysafe import idempotent, open_async_store, open_store
    from retrysafe.asgi import IdempotencyMiddleware
    from retrysafe.testing import RunCounter
    from retrysafe.wsgi import IdempotencyMiddleware as WSGIIdempotencyMiddleware

    AUTH = {"Authorization": "Bearer alice"}


    def asgi_app(charges: RunCounter, *, idempotent_: bool, store_url: str = "memory://"):
        async def pay(request):
            charges.increment()
            return JSONResponse({"charged": (await request.json())["amount"]}, status_code=201)

        app = Starlette(routes=[Route("/payments", pay, methods=["POST"])])
        if not idempotent_:
            return app
        return IdempotencyMiddleware(app, store=open_async_store(store_url))


    def wsgi_app(charges: RunCounter, *, idempotent_: bool, store=None):
        flask = Flask("payments")

        @flask.post("/payments")
        def pay():
            charges.increment()
            return {"charged": 1}, 201

        if not idempotent_:
            return flask.wsgi_app
        return WSGIIdempotencyMiddleware(flask.wsgi_app, store=store or open_store("memory://"))


    def effect_outside(charges: RunCounter, store):
        """An email sent before the idempotent part: every duplicate sends it."""

        @idempotent(store, key="order")
        def charge(order: str) -> str:
            return f"charged {order}"

        def checkout(order: str) -> str:
            charges.increment()  # the bug: this effect is not inside `charge`
            return charge(order)

        return checkout
    '''
)


@pytest.fixture
def sample(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester project holding the sample app as `payments.py`."""
    pytester.makepyfile(payments=SAMPLE_APP)
    return pytester
