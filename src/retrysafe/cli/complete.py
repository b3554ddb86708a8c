"""`retrysafe complete`: finish the operations whose client vanished, with a registry's phases.

It imports the application's `Registry` (`--app MODULE:NAME`, the module found from the current
directory as `python -m` would), then runs `retrysafe.completer.Completer` on the store's
database until Ctrl+C or SIGTERM, which let the operation in progress finish; `--once` makes
one pass and exits. `--retry KEY` gives an operation marked as needing attention its attempts
back and runs it at once, once its cause is fixed. A wrong URL or app is one line and exit 2;
a store that cannot be reached at start, exit 1.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from typing import Annotated

import typer

from retrysafe._record import Identity
from retrysafe._urls import redact_url
from retrysafe.cli._common import (
    EXIT_USAGE,
    DatabaseOption,
    console,
    errors_as_one_line,
    fail,
    parse_duration,
    warnings_to_stderr,
)
from retrysafe.completer import Completer, Pass, Registry
from retrysafe.completer._connect import connector

__all__ = ["EXAMPLES", "complete", "register"]

EXAMPLES = """\
Examples:

  retrysafe complete --store sqlite:///app.db --app myapp.operations:registry

  retrysafe complete --store postgresql://app@db/app --app myapp:registry --max-attempts 3

  retrysafe complete --store sqlite:///app.db --app myapp:registry --retry 0ccb7813-2b7e
"""


def complete(
    *,
    store_url: DatabaseOption,
    app: Annotated[
        str,
        typer.Option(
            "--app", metavar="MODULE:REGISTRY", help="The registry of resumable operations."
        ),
    ],
    once: Annotated[bool, typer.Option("--once", help="Make one pass, then exit.")] = False,
    interval: Annotated[
        str, typer.Option("--interval", help="The wait between passes when idle (5s, 1m).")
    ] = "5s",
    max_attempts: Annotated[
        int,
        typer.Option(
            "--max-attempts", min=1, help="Runs of one operation before it needs a person."
        ),
    ] = 5,
    lease: Annotated[
        str, typer.Option("--lease", help="The lease the completer holds an operation with.")
    ] = "30s",
    retry: Annotated[
        str | None,
        typer.Option(
            "--retry",
            metavar="KEY",
            help="Give the operation with this key its attempts back and run it now.",
        ),
    ] = None,
    scope: Annotated[
        str | None, typer.Option("--scope", help="With --retry: the key's scope.")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="With --retry: the key's namespace.")
    ] = None,
) -> None:
    """Finish atomic-phase operations left in flight past their lease, from their recovery point."""
    with errors_as_one_line():
        connect, table = connector(store_url)
        completer = Completer(
            load_registry(app),
            connect=connect,
            table=table,
            max_attempts=max_attempts,
            lease=parse_duration(lease),
            interval=parse_duration(interval),
        )
    with errors_as_one_line():
        if retry is not None:
            _retry(completer, retry, scope, namespace)
            return
        with warnings_to_stderr("retrysafe.completer", "%(levelname)s: %(message)s"):
            console.print(f"Completing operations in {redact_url(store_url)}", markup=False)
            stop = threading.Event()  # Ctrl+C and SIGTERM: after the operation in progress
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            _report(completer.run_once(stop))
            if once or stop.is_set():
                return
            completer.run(stop)


def load_registry(target: str) -> Registry:
    """Return the `Registry` that `MODULE:NAME` names, importing the module from the current
    directory if needed; a wrong target exits 2 with one line."""
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        fail(f"--app is MODULE:REGISTRY (myapp.operations:registry), not {target!r}.", EXIT_USAGE)
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        fail(f"Cannot import {module_name!r} for --app: {error}", EXIT_USAGE)
    registry = getattr(module, name, None)
    if not isinstance(registry, Registry):
        fail(f"{target!r} is not a retrysafe.completer.Registry: {registry!r}.", EXIT_USAGE)
    return registry


def _retry(completer: Completer, key: str, scope: str | None, namespace: str | None) -> None:
    rows = [
        row
        for row in completer.find(key)
        if scope in (None, row.identity.scope) and namespace in (None, row.identity.namespace)
    ]
    if not rows:
        fail(f"No unfinished resumable operation has key {key!r}.")
    if len(rows) > 1:
        fail(f"Key {key!r} names {len(rows)} operations: pass --scope and --namespace.", EXIT_USAGE)
    identity: Identity = rows[0].identity
    done = completer.retry(identity)
    _report(done)
    if not done.completed:
        fail(f"Operation {key!r} did not complete: see 'retrysafe keys show {key}'.")


def _report(done: Pass) -> None:
    console.print(
        f"completed {done.completed}, failed {done.failed}, held elsewhere {done.skipped}, "
        f"needs attention {done.needs_attention}",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add `retrysafe complete` to the CLI."""
    app.command("complete", epilog=EXAMPLES)(complete)
