"""`retrysafe proxy`: a placeholder until the reverse proxy is built."""

from __future__ import annotations

from typing import Annotated

import typer

from retrysafe.cli._common import EXIT_USAGE, fail

__all__ = ["proxy", "register"]


def proxy(
    *,
    upstream: Annotated[
        str,
        typer.Option("--upstream", metavar="URL", help="The HTTP service to put behind the proxy."),
    ],
    host: Annotated[str, typer.Option("--host", help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port to listen on.")] = 8080,
    store: Annotated[
        str, typer.Option("--store", metavar="URL", help="The idempotency store.")
    ] = "sqlite:///retrysafe.db",
    require_key: Annotated[
        bool, typer.Option("--require-key", help="Answer 400 to a POST or PATCH without a key.")
    ] = False,
    retention: Annotated[
        float, typer.Option("--retention", metavar="SECONDS", help="How long outcomes are kept.")
    ] = 86400.0,
    lease: Annotated[
        float, typer.Option("--lease", metavar="SECONDS", help="How long a claim holds its key.")
    ] = 30.0,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            help="How long a duplicate in flight waits (0: 409 at once).",
        ),
    ] = 10.0,
    scope_header: Annotated[
        str | None,
        typer.Option("--scope-header", metavar="NAME", help="Scope keys by this request header."),
    ] = None,
) -> None:
    """Put the idempotency middleware in front of any HTTP service (not built yet).

    Example: retrysafe proxy --upstream http://127.0.0.1:3000 --store redis://localhost:6379/0
    """
    fail("the proxy is not built yet", EXIT_USAGE)


def register(app: typer.Typer) -> None:
    """Add `retrysafe proxy` to the CLI."""
    app.command("proxy")(proxy)
