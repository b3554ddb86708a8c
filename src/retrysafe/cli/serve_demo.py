"""`retrysafe serve-demo`: serve the demo payments API behind the idempotency middleware."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Annotated

import anyio
import typer
import uvicorn

from retrysafe._urls import redact_url
from retrysafe.cli._common import console, errors_as_one_line, warnings_to_stderr
from retrysafe.cli._serving import GracefulServer, listening
from retrysafe.cli._stores import reach
from retrysafe.stores import open_async_store
from retrysafe.stores._closing import closed_on_error

if TYPE_CHECKING:
    from retrysafe.demo import DemoDatabase

__all__ = ["DEFAULT_STORE", "serve_demo"]

DEFAULT_STORE = "sqlite:///retrysafe-demo.db"

EXAMPLES = """\
Examples:

  retrysafe serve-demo

  retrysafe serve-demo --port 9000 --latency-ms 200

  retrysafe serve-demo --store postgresql://postgres@127.0.0.1/app

  retrysafe serve-demo --store mysql://root@127.0.0.1/app

Then, from another terminal:

  curl -X POST localhost:8000/payments -H 'Authorization: Bearer tenant-a'
  -H 'Idempotency-Key: "order-1"' -H 'Content-Type: application/json'
  -d '{"customer": "ada", "amount": 1999, "currency": "EUR"}'
"""


def serve_demo(
    host: Annotated[str, typer.Option("--host", help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="The port to listen on.")
    ] = 8000,
    store: Annotated[
        str,
        typer.Option(
            "--store",
            metavar="URL",
            help="The idempotency store; the demo tables go in the same SQL database.",
        ),
    ] = DEFAULT_STORE,
    latency_ms: Annotated[
        float,
        typer.Option(
            "--latency-ms", metavar="MS", min=0, help="Time each payment spends at the processor."
        ),
    ] = 0.0,
    require_key: Annotated[
        bool, typer.Option("--require-key", help="Answer 400 to a POST without Idempotency-Key.")
    ] = False,
) -> None:
    """Serve the demo payments API: POST/GET /payments, POST /users, GET /health.

    The bearer token names the tenant, and keys are scoped per tenant. Payments and user
    profiles live in their own tables in the store's database.

    With a SQLite (the default), PostgreSQL or MySQL store, POST /payments runs in
    transactional mode: the payment and its idempotency record commit in one transaction, so a
    crash between the two leaves neither. With a Redis or memory store, the demo tables are in
    an in-memory SQLite database and the idempotency middleware guards payments (record and
    payment commit separately). The middleware guards POST /users in every case.

    Ctrl+C (or SIGTERM) stops it gracefully, with exit status 0.
    """
    from retrysafe.demo import DemoDatabase, check_store  # noqa: PLC0415 - for this command alone

    # Failures to store an outcome (B19), as lines.
    shown = warnings_to_stderr("retrysafe", "%(levelname)s:     %(name)s: %(message)s")
    with shown, errors_as_one_line():
        sock = listening(host, port)
        with closed_on_error(sock):
            reach(store)
            check_store(store)
            database = DemoDatabase.for_store_url(store)
        try:
            anyio.run(_serve, sock, store, database, latency_ms / 1000, require_key)
        finally:
            database.close()


async def _serve(
    sock: socket.socket, store_url: str, database: DemoDatabase, latency: float, require_key: bool
) -> None:
    from retrysafe.demo import create_app  # noqa: PLC0415 - for this command alone

    store = open_async_store(store_url)  # closed by the app at lifespan shutdown
    try:
        app = create_app(database, store=store, latency=latency, required=require_key)
    except BaseException:
        await store.aclose()
        raise
    host, port = sock.getsockname()[:2]
    mode = "transactional mode" if app.transactional else "the idempotency middleware"
    config = uvicorn.Config(
        app, interface="asgi3", lifespan="on", log_level="info", timeout_graceful_shutdown=5
    )
    server = GracefulServer(config)
    server.keep_interrupts()  # from here, Ctrl+C stops it gracefully (exit 0)
    console.print(
        f"Demo payments API on [bold]http://{host}:{port}[/] "
        f"(store {redact_url(store_url)}, demo tables in {database.description}, "
        f"payments in {mode}, latency {latency * 1000:.0f} ms). Ctrl+C stops it."
    )
    await server.serve(sockets=[sock])
