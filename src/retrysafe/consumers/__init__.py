"""Queue consumers whose effects happen once per message, however often the broker delivers it.

Brokers deliver at least once: a consumer that dies before it acknowledges, a `nack` with
requeue, a publisher that retries a publish, all deliver a message again. `idempotent_message`
is `@idempotent` with the message id as the key and the body as the fingerprint, so a second
delivery replays the first one's outcome instead of repeating its effect:

    store = retrysafe.open_async_store("redis://localhost:6379/0")

    @idempotent_message(store, namespace="orders.charge", final_exceptions=(ValueError,))
    async def charge(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await payments.charge(json.loads(message.body))

    async with queue.iterator() as messages:
        async for message in messages:
            try:
                await charge(message)
            except Exception as error:
                await asyncio.sleep(requeue_delay(error))  # RabbitMQ redelivers at once
                await message.reject(requeue=should_requeue(error))
            else:
                await message.ack()  # after the outcome is stored, never before

Acknowledge only after the handler returns: the outcome is stored by then, so a crash between
the two makes the broker redeliver a message whose replay is a no-op. Make a body that does not
decode final, so it is dead-lettered, and wait `requeue_delay(error)` before a requeue, or a
store outage spins the loop. See docs/functions.md for the whole pattern, pika, Celery and
other task runners.

NATS JetStream messages carry their id in the `Nats-Msg-Id` header, which `idempotent_message`
reads too. `jetstream_message` (extra `[nats]`) adds the acknowledgement discipline: it acks a
delivery once its outcome is stored, sends in-progress acks while a slow handler runs (so
`ack_wait` does not redeliver it meanwhile), `term`s what no redelivery can fix and `nak`s the
rest:

    @jetstream_message(store, namespace="orders.charge", ack_wait=30)
    async def charge(msg: nats.aio.msg.Msg) -> None:
        await payments.charge(json.loads(msg.data))

    await js.subscribe("orders.new", durable="charge", cb=charge, manual_ack=True)

JetStream's own deduplication (`Nats-Msg-Id` within the stream's `duplicate_window`) drops a
duplicate *publish*; it does nothing about a message *delivered* twice, which is what these
decorators are for.

`versioned_message` deduplicates by (entity, version) instead: a message that carries an
entity id and a version is applied only if its version is newer than the last one applied for
that entity; an older or equal one is skipped (the handler is not called) and counted in a
`VersionCounter`. On a store, with the message-id claim in front; on the database connection
the handler writes with (or one that `connect=` opens for each delivery), in the same
transaction as its writes. See docs/durable.md.
"""

from __future__ import annotations

from retrysafe.consumers._messages import (
    idempotent_message,
    message_body_of,
    message_id_of,
    requeue_delay,
    should_requeue,
)
from retrysafe.consumers._nats import jetstream_message
from retrysafe.consumers._versioned import VersionCounter, message_header, versioned_message
from retrysafe.consumers._versioned_sql import ConnectionClosedError

__all__ = [
    "ConnectionClosedError",
    "VersionCounter",
    "idempotent_message",
    "jetstream_message",
    "message_body_of",
    "message_header",
    "message_id_of",
    "requeue_delay",
    "should_requeue",
    "versioned_message",
]
