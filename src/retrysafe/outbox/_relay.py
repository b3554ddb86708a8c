"""The relay: publishes committed outbox messages, in id order, and marks them published.

    relay = Relay("postgresql://app@db/app", AmqpPublisher("amqp://guest:guest@127.0.0.1:5672/"))
    relay.run()  # until relay.stop(), from another thread or a signal handler

Delivery is at least once: a message is marked only after its publisher returned (for AMQP,
after the broker confirmed it), so a relay that dies between the two publishes it again, with
the same message id, and the consumer (`retrysafe.consumers.idempotent_message`) applies it
once. Idle, the relay polls every `poll_interval`; after a failure it waits twice as long each
time, up to `max_backoff`, and a store connection it opened is opened afresh.

A message the publisher refuses every time (a queue that does not exist, with `mandatory`)
would hold back every later one: once `max_attempts` publishes of it failed, and a message after
it is published, it is parked (logged at ERROR, kept with its last error, skipped) until an
operator re-queues it (`parked_messages`, `requeue`). An outage parks nothing (`_batch.py`).

A table of an older release gets its new columns when the relay opens it, but never by making
the app's writes wait: while another session holds the table the upgrade is deferred (logged
once), the relay publishes with the columns the table has, and tries again before each batch
(`_source.py`).

Published messages older than `retention` are purged in bounded chunks, each its own short
transaction, after batches that were not full (`_purge`): a long backlog neither locks the app
out of the database nor holds back publishing, and a failed purge fails no batch.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol

from retrysafe._clock import Clock, SystemClock, doubled
from retrysafe._errors import ConfigurationError
from retrysafe.observe._text import printable
from retrysafe.outbox._batch import ParkedMessage
from retrysafe.outbox._messages import OutboxMessage
from retrysafe.outbox._source import OutboxSource, open_source
from retrysafe.stores._closing import closed_on_error

__all__ = ["Publisher", "Relay"]

logger = logging.getLogger("retrysafe")

_PURGE_EVERY = 60.0  # seconds between purges of published messages
_PURGE_CHUNK = 1000  # messages deleted in one short transaction
_PURGE_CHUNKS = 10  # chunks in one purge: a longer backlog is purged over the next idle batches


class Publisher(Protocol):
    """Publishes one message; returns once it is accepted (an AMQP confirm), else raises."""

    def __call__(self, message: OutboxMessage, /) -> None:
        """Publish `message`; raise if it may not have been accepted."""
        ...


@dataclass(eq=False)
class Relay:
    """Moves committed outbox messages to a publisher.

    Args:
        store: the store's URL (`sqlite:///path.db`, `postgresql://...`; its `table` option
            names the records table, next to which the outbox table is), or a
            `sqlite3.Connection` or psycopg `Connection` with no transaction open.
        publisher: called with each message in id order (`AmqpPublisher`, or any callable).
        table: the records table (default: the URL's `table`, else `retrysafe_records`).
        batch: the most messages read, published and marked at a time.
        poll_interval: seconds to wait when no message is waiting.
        max_backoff: the longest wait after failures (which double the wait each time).
        retention: seconds a published message is kept before it is purged.
        max_attempts: failed publishes of one message after which it is parked, once a message
            after it is published (so the publisher works and refuses that one); `None` never
            parks: such a message holds back every later one.
        clock: the time source (default: the system clock).
    """

    store: object
    publisher: Publisher
    _: KW_ONLY
    table: str | None = None
    batch: int = 100
    poll_interval: float = 1.0
    max_backoff: float = 30.0
    retention: float = 86400.0
    max_attempts: int | None = 5
    clock: Clock = field(default_factory=SystemClock)
    published: int = field(default=0, init=False)
    """How many messages this relay published and marked."""
    parked: int = field(default=0, init=False)
    """How many messages this relay parked."""
    _source: OutboxSource | None = field(default=None, init=False, repr=False)
    _next_purge: float = field(default=0.0, init=False, repr=False)
    _deferred: bool = field(default=False, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        waits = (self.poll_interval, self.max_backoff, self.retention)
        if (
            self.batch < 1
            or not all(map(math.isfinite, waits))
            or self.poll_interval <= 0
            or self.max_backoff < self.poll_interval
            or self.retention <= 0
            or (self.max_attempts is not None and self.max_attempts < 1)
        ):
            raise ConfigurationError(
                "Need batch >= 1, poll_interval > 0, max_backoff >= poll_interval, "
                "retention > 0 (all three finite) and max_attempts >= 1 (or None)."
            )

    def run_once(self) -> int:
        """Publish one batch and mark it; purge old published messages now and then; return
        how many messages were published.

        Raises:
            Exception: the publisher's error that stopped the batch (what it published
                before is marked, the failure counted on the message's row).
        """
        source = self._opened()
        batch = source.relay(self.batch, self.publisher, self.clock.now, self.max_attempts)
        published = len(batch.published)
        self.published += published
        self.parked += len(batch.parked)
        for parked in batch.parked:
            message = parked.message
            logger.error(
                "The outbox relay parked message %s (#%d, topic %r) after %d failed publishes; "
                "the messages after it go on. Last error: %s",
                message.message_id,
                message.id,
                message.topic,
                parked.attempts,
                printable(parked.error),
            )
        if batch.error is not None:
            raise batch.error
        now = self.clock.now()
        if published < self.batch and now >= self._next_purge:
            self._purge(source, now)
        return published

    def run(self) -> None:
        """Relay until `stop`: at once while batches come full, every `poll_interval` when
        idle, with a doubling wait (at most `max_backoff`) after each failure in a row.

        Raises:
            ConfigurationError: the store URL or the table is wrong (no retry can help).
        """
        self._stopping.clear()
        failures = 0
        while not self._stopping.is_set():
            try:
                published = self.run_once()
            except ConfigurationError:
                raise  # no retry fixes a wrong URL or table name
            except Exception as error:
                failures += 1
                wait = doubled(self.poll_interval, failures, self.max_backoff)
                message = printable(str(error))
                logger.warning("The outbox relay failed, trying again in %.1fs: %s", wait, message)
                logger.debug("The outbox relay's failure", exc_info=True)
                self._reset()
            else:
                failures = 0
                wait = 0.0 if published == self.batch else self.poll_interval
            if wait:
                self._stopping.wait(wait)

    def parked_messages(self) -> list[ParkedMessage]:
        """Return the parked messages, in id order, with their failed publishes and last error."""
        return self._opened().parked()

    def requeue(self, message_ids: Iterable[str] | None = None) -> int:
        """Put parked messages back in line, their attempts counted afresh; return how many.

        Args:
            message_ids: the message ids to re-queue (default: every parked message).
        """
        source = self._opened()
        if message_ids is None:
            message_ids = [parked.message_id for parked in source.parked()]
        return source.requeue(message_ids)

    def stop(self) -> None:
        """Make `run` return after the batch in progress (safe from any thread)."""
        self._stopping.set()

    def close(self) -> None:
        """Close the store connection the relay opened (a given connection stays open)."""
        self._reset()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _opened(self) -> OutboxSource:
        source = self._source
        if source is None:
            source = open_source(self.store, self.table)
            with closed_on_error(source):
                self._prepare(source)
            self._source = source
        elif source.pending:
            self._prepare(source)
        return source

    def _prepare(self, source: OutboxSource) -> None:
        """Create or upgrade the table; say once that its upgrade is deferred, and when done."""
        source.prepare()
        if source.pending and not self._deferred:
            logger.warning(
                "The outbox relay deferred the upgrade of table %s: another session holds it, "
                "and the app's writes would wait for the upgrade. It publishes meanwhile, "
                "without parking, and tries again before each batch.",
                source.table.name,
            )
        elif self._deferred and not source.pending:
            logger.info("The outbox relay upgraded table %s.", source.table.name)
        self._deferred = source.pending

    def _purge(self, source: OutboxSource, now: float) -> None:
        """Delete the messages published more than `retention` ago, at most `_PURGE_CHUNKS`
        chunks of `_PURGE_CHUNK`; a purge that found more goes on after the next batch that is
        not full. A failure is logged and the next purge comes at its time: the batch stands."""
        self._next_purge = now + min(_PURGE_EVERY, self.retention)
        try:
            purged = source.purge(now - self.retention, _PURGE_CHUNK, _PURGE_CHUNKS)
        except Exception as error:
            logger.warning(
                "The outbox relay could not purge published messages, trying again in %.0fs: %s",
                self._next_purge - now,
                printable(str(error)),
            )
            logger.debug("The outbox relay's failed purge", exc_info=True)
            self._reset()  # the deadline may have cut the connection: a new one next batch
            return
        if purged >= _PURGE_CHUNK * _PURGE_CHUNKS:
            self._next_purge = now  # more may wait

    def _reset(self) -> None:
        """Drop the source, closing a connection the relay opened, to open it afresh."""
        source, self._source = self._source, None
        if source is not None:
            try:
                source.close()
            except Exception:
                logger.debug("Closing the outbox relay's connection failed", exc_info=True)
