"""A real NATS JetStream consumer for the crash test, run as its own process.

    python -m tests.functions.nats_consumer_app --nats URL --stream S --durable D --store URL
        --effects PATH --ack-wait SECONDS [--stall-at N --ready PATH] [--idle SECONDS --expect N]

It binds to a durable pull consumer the test created, fetches small batches and handles each
message through `@jetstream_message`, which acks, naks or terms it; the effect is recorded
durably, one row per message id in a SQLite file with a counter that a repeated effect would
push past 1. With `--stall-at N` the N-th execution writes the `--ready` file (the message id)
from inside the handler and hangs before its effect, still sending in-progress acks, for the
test to SIGKILL the process there. With `--idle S --expect N` the consumer exits once a fetch
has waited S seconds for nothing and N message ids have had their effect, writing its counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from retrysafe import open_async_store
from retrysafe.consumers import jetstream_message, message_id_of

BATCH = 5


class TransientError(Exception):
    """A failure before the effect, like a dependency timing out: the message is nak'ed."""


def open_effects(path: str) -> sqlite3.Connection:
    """Open the effects database, creating its tables."""
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE IF NOT EXISTS effects (message_id TEXT PRIMARY KEY, count INT)")
    db.execute("CREATE TABLE IF NOT EXISTS attempts (message_id TEXT PRIMARY KEY)")
    db.execute("CREATE TABLE IF NOT EXISTS counts (name TEXT PRIMARY KEY, value INT)")
    return db


async def consume(options: argparse.Namespace) -> None:
    """Consume the durable consumer until killed, or idle with every effect done."""
    db = open_effects(options.effects)
    store = open_async_store(options.store)
    counts = {"deliveries": 0, "redelivered": 0, "executions": 0}

    @jetstream_message(
        store, namespace="tests.nats", ack_wait=options.ack_wait, lease=1.0, nak_delay=0.1
    )
    async def handle(msg: Msg) -> int:
        counts["executions"] += 1
        message_id = message_id_of(msg)
        if counts["executions"] == options.stall_at:
            await asyncio.to_thread(Path(options.ready).write_text, message_id)
            await asyncio.sleep(3600)  # the test kills the process here, before the effect
        payload = json.loads(msg.data)
        if payload["fail_once"]:
            first = db.execute("INSERT OR IGNORE INTO attempts VALUES (?)", (message_id,)).rowcount
            if first:
                raise TransientError(message_id)
        db.execute(
            "INSERT INTO effects VALUES (?, 1)"
            " ON CONFLICT (message_id) DO UPDATE SET count = count + 1",
            (message_id,),
        )
        return int(payload["n"])

    connection = await nats.connect(options.nats)
    try:
        js = connection.jetstream()
        subscription = await js.pull_subscribe_bind(durable=options.durable, stream=options.stream)
        while True:
            try:
                messages = await subscription.fetch(BATCH, timeout=options.idle or 5.0)
            except TimeoutError:  # nats.errors.TimeoutError, or asyncio's own
                if options.idle is not None and await finished(connection, db, options):
                    break
                continue
            for msg in messages:
                counts["deliveries"] += 1
                counts["redelivered"] += msg.metadata.num_delivered > 1
                await handle(msg)
    finally:
        await connection.close()
        await store.aclose()
    db.executemany("INSERT OR REPLACE INTO counts VALUES (?, ?)", counts.items())
    db.close()


async def finished(connection: Client, db: sqlite3.Connection, options: argparse.Namespace) -> bool:
    """Whether every message id had its effect and the consumer has nothing left to deliver."""
    (done,) = db.execute("SELECT count(*) FROM effects").fetchone()
    if done < options.expect:
        return False
    await connection.flush()  # our acks reach the server first
    info = await connection.jetstream().consumer_info(options.stream, options.durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


def main() -> None:
    """Parse the options and consume."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--durable", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--effects", required=True)
    parser.add_argument("--ack-wait", type=float, required=True)
    parser.add_argument("--stall-at", type=int, default=0)
    parser.add_argument("--ready", default="")
    parser.add_argument("--idle", type=float, default=None)
    parser.add_argument("--expect", type=int, default=0)
    asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    main()
