"""`retrysafe demo`: the same payments through a faulty network, without keys and with them."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from retrysafe.cli._common import EXIT_FAILURE, console, errors_as_one_line, print_json
from retrysafe.cli._stores import reach

__all__ = ["EXAMPLES", "demo"]

EXAMPLES = """\
Examples:

  retrysafe demo

  retrysafe demo --requests 500 --loss 0.5 --seed 7

  retrysafe demo --store postgresql://postgres@127.0.0.1/app --json

  retrysafe demo --store mysql://root@127.0.0.1/app

Exit status: 0 when the run with keys charged no payment twice, 1 otherwise; 130 when
interrupted by Ctrl+C.
"""


def demo(
    requests: Annotated[
        int, typer.Option("--requests", min=1, max=100_000, metavar="N", help="Payments per run.")
    ] = 200,
    loss: Annotated[
        float,
        typer.Option(
            "--loss",
            min=0.0,
            max=0.9,
            metavar="FRACTION",
            help="Share of responses the faulty hop loses after the API applied the request.",
        ),
    ] = 0.3,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            metavar="URL",
            help="The store (and the demo tables' database); default: a fresh SQLite file.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", metavar="N", help="Seed the faults, to run the same ones again."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Write the report as JSON to stdout.")
    ] = False,
) -> None:
    """Show what idempotency keys change when responses get lost and clients retry.

    Starts the demo payments API on a free loopback port, then sends the same payments twice
    through a hop that loses responses, delays some, and sends some twice at once, with a
    retrying client: once without Idempotency-Keys, once with them. The charges are counted
    in the API's own payments table.
    """
    from retrysafe.demo import DemoSettings, run_demo  # noqa: PLC0415 - for this command alone

    settings = DemoSettings(
        requests=requests,
        loss=loss,
        store=store,
        seed=seed if seed is not None else secrets.randbelow(1_000_000),
    )
    if store is not None:
        with errors_as_one_line():
            reach(store)  # an unreachable PostgreSQL or MySQL server: its reason, in seconds
    progress_console = Console(stderr=True)
    with (
        errors_as_one_line(),
        Progress(
            TextColumn("{task.description:>13}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=progress_console,
            transient=True,
        ) as progress,
    ):
        tasks: dict[bool, TaskID] = {}

        def on_progress(keys: bool, done: int) -> None:
            if keys not in tasks:
                label = "with keys" if keys else "without keys"
                tasks[keys] = progress.add_task(label, total=requests)
            progress.update(tasks[keys], completed=done)

        report = run_demo(settings, on_progress)
    if as_json:
        print_json(report.as_json())
    else:
        console.print(report.render())
    if not report.ok:
        raise typer.Exit(EXIT_FAILURE)
