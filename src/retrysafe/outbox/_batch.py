"""One relay batch's decisions, without I/O: which messages were published, which failed, which
are parked, and which error the batch ends with.

A publish that fails stops the batch, so the messages after it wait and the order holds; the
failure is counted on the message's row. A message whose publishes failed `max_attempts` times
is *suspect*: when it fails again the batch goes on past it, and once a message after it is
published (so the publisher works, and refuses that one) it is parked: set aside with its last
error, never lost, until an operator re-queues it. A broker outage parks nothing, since no
message after a suspect is published while it lasts; and it costs one publish a batch: a
publisher that cannot reach its broker says so with an `OSError` (`ConnectionError`,
`TimeoutError`), which stops the batch, suspect or not. Past `MOST_SUSPECTS` suspects that
failed in a row (an outage a publisher reports otherwise), the batch stops too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from retrysafe.outbox._messages import OutboxMessage, decode_headers

__all__ = ["Batch", "Parked", "ParkedMessage", "describe"]

Publish = Callable[[OutboxMessage], None]
_MAX_ERROR: Final = 1000  # characters of an error kept on its row
MOST_SUSPECTS: Final = 10
"""The most suspects a batch goes past without a publish after them: more refused in a row
hold the rest back, as an outage does, until they are re-queued or the publisher is fixed."""


class Parked(NamedTuple):
    """A message this batch parked: its failed publishes in all, and the last error."""

    message: OutboxMessage
    attempts: int
    error: str


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    """A parked message, as `Relay.parked_messages` lists it for an operator.

    Attributes:
        id: its row's position in the outbox table.
        message_id: the derived id (`Relay.requeue` takes it).
        topic: where it goes.
        attempts: how many publishes of it failed.
        last_error: the publisher's last error, as text.
        parked_at: when the relay parked it (seconds since the epoch).
    """

    id: int
    message_id: str
    topic: str
    attempts: int
    last_error: str
    parked_at: float


def describe(error: BaseException) -> str:
    """Return an error as the text its row keeps: its type and message, shortened."""
    return f"{type(error).__name__}: {error}"[:_MAX_ERROR]


class Batch:
    """Publishes rows, fetched in id order in one or more reads, and keeps what happened.

    Args:
        publish: the relay's publisher.
        limit: the most messages published in the batch.
        max_attempts: failed publishes after which a message may be parked; None never parks.
    """

    def __init__(self, publish: Publish, limit: int, max_attempts: int | None) -> None:
        self.publish, self.limit, self.max_attempts = publish, limit, max_attempts
        self.published: list[int] = []  # the ids of the rows published, to mark
        self.failed: list[tuple[str, int]] = []  # (error, id) of each failed publish
        self.parked: list[Parked] = []  # the messages to park
        self.after = 0  # the last id read: the next read starts after it
        self._suspects: list[Parked] = []  # failed again, no later message published yet
        self._stopped: Exception | None = None
        self._suspect_error: Exception | None = None

    def run(self, rows: Sequence[Any]) -> bool:
        """Publish `rows` in order; return whether the batch wants the rows after them (it
        went past suspects, is not full, and `rows` may not be the last)."""
        for row in rows:
            message, attempts = _message(row), int(row[6]) + 1
            self.after = message.id
            try:
                self.publish(message)
            except Exception as error:  # recorded; the batch ends with it (`error`)
                self.failed.append((describe(error), message.id))
                if (
                    self.max_attempts is None
                    or attempts < self.max_attempts
                    or isinstance(error, OSError)  # the broker is out of reach, not refusing
                    or len(self._suspects) >= MOST_SUSPECTS
                ):
                    self._stopped = error  # the rows after it wait: the order holds
                    return False
                self._suspects.append(Parked(message, attempts, describe(error)))
                self._suspect_error = error
                continue
            self.published.append(message.id)
            self.parked.extend(self._suspects)  # a later message passed: they are refused
            self._suspects.clear()
            if len(self.published) >= self.limit:
                return False
        return len(rows) >= self.limit

    @property
    def error(self) -> Exception | None:
        """The error the batch ends with: the failure that stopped it, else a suspect's that
        no later message passed (nothing may work: an outage), else None."""
        if self._stopped is not None:
            return self._stopped
        return self._suspect_error if self._suspects else None


def _message(row: Sequence[Any]) -> OutboxMessage:
    row_id, message_id, topic, payload, headers, created_at = row[:6]
    return OutboxMessage(
        int(row_id),
        str(message_id),
        str(topic),
        bytes(payload),
        decode_headers(headers),
        float(created_at),
    )
