"""The transactional outbox: messages that commit with the business writes, then get published.

A side effect that must follow a commit (an event, an e-mail) is lost if sent after the commit
and the process dies first, and sent twice if sent before it and the transaction retries. In
transactional mode, `tx.outbox.add(topic, payload)` (or `step.outbox` in atomic phases, and the
web faces' `tx.outbox`) writes the message in the same transaction as the writes and the
record; a relay publishes committed messages and marks them published:

    with transactions.sqlite(conn, identity=identity, fingerprint=fp) as tx:
        ...
        tx.outbox.add("orders.paid", body)
        tx.complete(outcome)

    Relay("sqlite:///app.db", AmqpPublisher("amqp://guest:guest@127.0.0.1:5672/")).run()

Each message id derives from the operation's key (`message_id`), so a message published twice
(the relay died after the broker took it, before marking it) is applied once by a consumer
that deduplicates on it (`retrysafe.consumers.idempotent_message`). A message the broker
refuses `max_attempts` times is parked, so the later ones go on, and listed
(`Relay.parked_messages`) and re-queued (`Relay.requeue`) by an operator. See docs/outbox.md.
"""

from __future__ import annotations

from retrysafe.outbox._batch import ParkedMessage
from retrysafe.outbox._messages import Outbox, OutboxMessage, message_id, outbox_table
from retrysafe.outbox._relay import Publisher, Relay
from retrysafe.outbox.amqp import AmqpPublisher

__all__ = [
    "AmqpPublisher",
    "Outbox",
    "OutboxMessage",
    "ParkedMessage",
    "Publisher",
    "Relay",
    "message_id",
    "outbox_table",
]
