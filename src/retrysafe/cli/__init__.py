"""The `retrysafe` command line: the demo, the demo API, the proxy, and the key admin tools.

retrysafe demo                  what idempotency keys change under real faults
retrysafe serve-demo            the demo payments API
retrysafe proxy --upstream URL  the middleware in front of any HTTP service
retrysafe keys ...              inspect and clean a store
retrysafe console --store URL   the operator's web console over a store
retrysafe complete --store URL  finish operations whose client vanished
retrysafe outbox-relay ...      publish the transactional outbox's committed messages
"""

from __future__ import annotations

import logging
import sys
from importlib import metadata
from typing import Annotated

from retrysafe._extras import missing_extra

try:
    import typer

    from retrysafe.cli import keys
    from retrysafe.cli._common import EXIT_FAILURE, EXIT_INTERRUPTED, fail
    from retrysafe.cli.complete import register as register_complete
    from retrysafe.cli.console import EXAMPLES as CONSOLE_EXAMPLES
    from retrysafe.cli.console import serve_console
    from retrysafe.cli.demo import EXAMPLES as DEMO_EXAMPLES
    from retrysafe.cli.demo import demo
    from retrysafe.cli.outbox import register as register_outbox
    from retrysafe.cli.proxy import register as register_proxy
    from retrysafe.cli.serve_demo import EXAMPLES as SERVE_DEMO_EXAMPLES
    from retrysafe.cli.serve_demo import serve_demo
except ImportError as error:
    raise missing_extra("The retrysafe command", "cli", error) from error

__all__ = ["app", "main"]

app = typer.Typer(
    name="retrysafe",
    help="Make retries safe: idempotency keys for HTTP, functions, queues and SQL transactions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    epilog="Run 'retrysafe COMMAND --help' for a command's options and examples.",
)


def _print_version(value: bool) -> None:
    """Print the installed distribution's version (its one source) and exit 0."""
    if not value:
        return
    try:
        version = metadata.version("retrysafe")
    except metadata.PackageNotFoundError:
        fail("retrysafe is not installed (pip install retrysafe): it has no version to show.")
    typer.echo(f"retrysafe {version}")
    raise typer.Exit


@app.callback()
def _root(
    *,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Make retries safe: idempotency keys for HTTP, functions, queues and SQL transactions."""
    del version  # handled by its callback, before any command runs


app.command("demo", epilog=DEMO_EXAMPLES)(demo)
app.command("serve-demo", epilog=SERVE_DEMO_EXAMPLES)(serve_demo)
register_proxy(app)
app.add_typer(keys.app, name="keys")
app.command("console", epilog=CONSOLE_EXAMPLES)(serve_console)
register_complete(app)
register_outbox(app)


def main() -> None:
    """Run the CLI (the `retrysafe` console script)."""
    # Drivers log their retries (psycopg's pool, say) as warnings; with no handler configured,
    # Python would print them next to our one-line error. Commands that want logs add handlers.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    try:
        app()
    except KeyboardInterrupt:  # before a command runs; inside one, typer exits 130 itself
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit:  # pragma: no cover - app() exits through SystemExit itself
        raise
    except Exception as error:  # the last guard: one line, never a traceback
        try:
            fail(f"{type(error).__name__}: {error}", EXIT_FAILURE)
        except typer.Exit as exit_:
            sys.exit(exit_.exit_code)
