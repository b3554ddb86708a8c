"""A JetStream consumer process for the pause test: a pull loop over `@jetstream_message`.

    python -m tests.consumers.pause_app --nats URL --stream S --durable D --store URL
        --ack-wait SECONDS --events PATH [--wait SECONDS] [--die]

Every step is one line appended to the `--events` file, `<event> <pid> <detail>`: `ready`
once bound, `fetched` for each delivery (with its delivery count), `start` when the handler
begins, `effect` when it has done its side effect. The handler's provider call takes 1.5 s;
with `--die`, the process SIGKILLs itself once the handler began.
It consumes until the test kills it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import nats
from nats.aio.msg import Msg

from retrysafe import open_async_store
from retrysafe.consumers import jetstream_message, message_id_of


def event(path: str, *words: object) -> None:
    """Append one line to the events file (one write: lines of two processes never mix)."""
    line = " ".join(str(word) for word in words) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def consume(options: argparse.Namespace) -> None:
    """Consume the durable consumer until killed."""
    store = open_async_store(options.store)
    pid = os.getpid()

    @jetstream_message(store, namespace="tests.pause", ack_wait=options.ack_wait, wait=options.wait)
    async def charge(msg: Msg) -> None:
        event(options.events, "start", pid, message_id_of(msg))
        if options.die:
            os.kill(pid, signal.SIGKILL)  # dies inside its handler, holding the message id
        await asyncio.sleep(1.5)  # the provider call
        event(options.events, "effect", pid, message_id_of(msg))

    connection = await nats.connect(options.nats)
    js = connection.jetstream()
    subscription = await js.pull_subscribe_bind(durable=options.durable, stream=options.stream)
    event(options.events, "ready", pid, "-")
    while True:
        try:
            messages = await subscription.fetch(1, timeout=1)
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's own
            continue
        for msg in messages:
            event(options.events, "fetched", pid, msg.metadata.num_delivered)
        await asyncio.gather(*(charge(msg) for msg in messages))


def main() -> None:
    """Parse the options and consume."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--nats", "--stream", "--durable", "--store", "--events"):
        parser.add_argument(name, required=True)
    parser.add_argument("--ack-wait", type=float, required=True)
    parser.add_argument("--wait", type=float, default=10.0)
    parser.add_argument("--die", action="store_true", help="SIGKILL itself in the handler")
    asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    main()
