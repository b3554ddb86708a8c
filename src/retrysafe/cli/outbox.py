"""`retrysafe outbox-relay`: publish a store's committed outbox messages to RabbitMQ.

It runs `retrysafe.outbox.Relay` with an `AmqpPublisher` until Ctrl+C or SIGTERM, which let the
batch in progress finish; `--once` publishes what is waiting and exits. A wrong URL, or a store
or broker that cannot be reached at start, is one line and exit 1 (2 for a wrong option);
afterwards a failure is a warning line and the relay tries again, waiting longer each time.
`--parked` lists the messages the relay parked (the broker refused each `--max-attempts` times
while later ones went), and `--requeue ID` puts one back in line; neither contacts the broker.
"""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from retrysafe._urls import redact_url
from retrysafe.cli._common import (
    DatabaseOption,
    console,
    errors_as_one_line,
    literal,
    parse_duration,
    warnings_to_stderr,
)
from retrysafe.outbox import AmqpPublisher, Relay

__all__ = ["EXAMPLES", "outbox_relay", "register"]

EXAMPLES = """\
Examples:

  retrysafe outbox-relay --store sqlite:///app.db --to amqp://guest:guest@127.0.0.1:5672/

  retrysafe outbox-relay --store postgresql://app@db/app --to amqp://rabbit/ --exchange events

  retrysafe outbox-relay --store sqlite:///app.db --to amqp://rabbit/ --once

  retrysafe outbox-relay --store sqlite:///app.db --to amqp://rabbit/ --parked

  retrysafe outbox-relay --store sqlite:///app.db --to amqp://rabbit/ --requeue MESSAGE_ID
"""


def outbox_relay(
    *,
    store_url: DatabaseOption,
    to: Annotated[
        str,
        typer.Option("--to", metavar="URL", help="The broker: amqp://user:password@host:5672/."),
    ],
    exchange: Annotated[
        str,
        typer.Option("--exchange", help="The exchange (default: the default exchange, '')."),
    ] = "",
    batch: Annotated[
        int, typer.Option("--batch", min=1, help="The most messages published at a time.")
    ] = 100,
    poll_interval: Annotated[
        str, typer.Option("--poll-interval", help="How often to look when idle (1s, 500ms).")
    ] = "1s",
    retention: Annotated[
        str, typer.Option("--retention", help="How long published messages are kept (1d).")
    ] = "1d",
    once: Annotated[
        bool, typer.Option("--once", help="Publish what is waiting, then exit.")
    ] = False,
    confirm_timeout: Annotated[
        str,
        typer.Option(
            "--confirm-timeout",
            help="How long one publish waits for the broker's confirm before the broker counts "
            "as out of reach (10s).",
        ),
    ] = "10s",
    max_attempts: Annotated[
        int,
        typer.Option(
            "--max-attempts",
            min=0,
            help="Failed publishes after which a message is parked once a later one went "
            "(0: never park; such a message holds back every later one).",
        ),
    ] = 5,
    parked: Annotated[
        bool, typer.Option("--parked", help="List the parked messages, then exit.")
    ] = False,
    requeue: Annotated[
        list[str] | None,
        typer.Option(
            "--requeue",
            metavar="MESSAGE_ID",
            help="Put a parked message back in line (repeatable; 'all' for every one), then exit.",
        ),
    ] = None,
) -> None:
    """Publish committed outbox messages to RabbitMQ, in order, with publisher confirms."""
    with errors_as_one_line():
        publisher = AmqpPublisher(to, exchange=exchange, confirm_timeout=_seconds(confirm_timeout))
        relay = Relay(
            store_url,
            publisher,
            batch=batch,
            poll_interval=_seconds(poll_interval),
            retention=parse_duration(retention),
            max_attempts=max_attempts or None,
        )
    if parked or requeue:
        with relay, errors_as_one_line():
            _operate(relay, requeue)
        return
    with relay, errors_as_one_line():
        try:
            console.print(
                f"Relaying the outbox of {redact_url(store_url)} to {redact_url(to)}",
                markup=False,
            )
            while relay.run_once() == batch:  # what is waiting, and a first check of both ends
                pass
            if not once:
                with warnings_to_stderr("retrysafe", "warning: %(message)s"):
                    _stop_on_signals(relay)
                    relay.run()
        finally:
            publisher.close()
    console.print(f"Published {relay.published} messages", markup=False)


def _operate(relay: Relay, requeue: list[str] | None) -> None:
    """Re-queue the named parked messages (`all`: every one), else list the parked ones."""
    if requeue:
        chosen = None if "all" in requeue else requeue
        console.print(f"Re-queued {relay.requeue(chosen)} messages", markup=False)
        return
    found = relay.parked_messages()
    for message in found:  # the app's topics and the broker's errors: printed literally (B35)
        line = (
            f"{message.message_id}  #{message.id}  {message.topic}  {message.attempts} failed"
            f"  {message.last_error}"
        )
        console.print(literal(line), soft_wrap=True)
    console.print(f"{len(found)} parked messages", markup=False)


def _seconds(text: str) -> float:
    """Return the seconds in a duration, with `ms` for short poll intervals."""
    if text.strip().endswith("ms"):
        return float(text.strip()[:-2]) / 1000
    return parse_duration(text)


def _stop_on_signals(relay: Relay) -> None:
    """Let Ctrl+C and SIGTERM stop the relay after its batch in progress."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: relay.stop())


def register(app: typer.Typer) -> None:
    """Add `retrysafe outbox-relay` to the CLI."""
    app.command("outbox-relay", epilog=EXAMPLES)(outbox_relay)
