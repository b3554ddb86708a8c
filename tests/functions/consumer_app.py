"""A real RabbitMQ consumer for the crash test, run as its own process.

    python -m tests.functions.consumer_app --amqp URL --queue Q --store URL --effects PATH
        [--stall-at N --ready PATH] [--idle SECONDS --expect N]

It consumes with aio-pika, handles each message through `@idempotent_message`, and records the
effect durably: one row per message id in a SQLite file, with a counter that a repeated effect
would push past 1. Acknowledgements are batched (every 5 messages), so a crash leaves handled
but unacknowledged messages for the broker to redeliver. With `--stall-at N` the N-th execution
writes the `--ready` file and hangs before its effect, for the test to SIGKILL the process there.
With `--idle S --expect N` the consumer exits once no message has come for S seconds and N
message ids have had their effect, writing its counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from pathlib import Path

import aio_pika
import aio_pika.abc

from retrysafe import open_async_store
from retrysafe.consumers import idempotent_message, should_requeue

ACK_EVERY = 5


class TransientError(Exception):
    """A failure before the effect, like a dependency timing out: the message is requeued."""


def open_effects(path: str) -> sqlite3.Connection:
    """Open the effects database, creating its tables."""
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE IF NOT EXISTS effects (message_id TEXT PRIMARY KEY, count INT)")
    db.execute("CREATE TABLE IF NOT EXISTS attempts (message_id TEXT PRIMARY KEY)")
    db.execute("CREATE TABLE IF NOT EXISTS counts (name TEXT PRIMARY KEY, value INT)")
    return db


async def consume(options: argparse.Namespace) -> None:
    """Consume the queue until killed or idle."""
    db = open_effects(options.effects)
    store = open_async_store(options.store)
    counts = {"deliveries": 0, "redelivered": 0, "executions": 0, "rejected": 0}

    @idempotent_message(store, namespace="tests.consumer", lease=1.0, wait=5.0)
    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> int:
        counts["executions"] += 1
        if counts["executions"] == options.stall_at:
            await asyncio.to_thread(Path(options.ready).write_text, str(message.message_id))
            await asyncio.sleep(3600)  # the test kills the process here, before the effect
        payload = json.loads(message.body)
        if payload["fail_once"]:
            first = db.execute(
                "INSERT OR IGNORE INTO attempts VALUES (?)", (message.message_id,)
            ).rowcount
            if first:
                raise TransientError(message.message_id)
        db.execute(
            "INSERT INTO effects VALUES (?, 1)"
            " ON CONFLICT (message_id) DO UPDATE SET count = count + 1",
            (message.message_id,),
        )
        return int(payload["n"])

    connection = await aio_pika.connect(options.amqp)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=20)
        queue = await channel.get_queue(options.queue)
        handled: aio_pika.abc.AbstractIncomingMessage | None = None
        unacked = 0
        while True:
            try:
                async with queue.iterator(timeout=options.idle) as messages:
                    async for message in messages:
                        counts["deliveries"] += 1
                        counts["redelivered"] += bool(message.redelivered)
                        try:
                            await handle(message)
                        except Exception as error:  # every failure is a reject
                            if handled is not None:
                                await handled.ack(multiple=True)
                                handled, unacked = None, 0
                            counts["rejected"] += 1
                            await message.reject(requeue=should_requeue(error))
                            continue
                        handled, unacked = message, unacked + 1
                        if unacked == ACK_EVERY:
                            await message.ack(multiple=True)
                            handled, unacked = None, 0
            except TimeoutError:
                pass  # no delivery for a while: done, if every message has had its effect
            if handled is not None:
                await handled.ack(multiple=True)
                handled, unacked = None, 0
            (done,) = db.execute("SELECT count(*) FROM effects").fetchone()
            if done >= options.expect:
                break
    await store.aclose()
    db.executemany("INSERT OR REPLACE INTO counts VALUES (?, ?)", counts.items())
    db.close()


def main() -> None:
    """Parse the options and consume."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--effects", required=True)
    parser.add_argument("--stall-at", type=int, default=0)
    parser.add_argument("--ready", default="")
    parser.add_argument("--idle", type=float, default=None)
    parser.add_argument("--expect", type=int, default=0)
    asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    main()
