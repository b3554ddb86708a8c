"""Publishing outbox messages to RabbitMQ (AMQP 0-9-1) with publisher confirms, through pika.

Each message goes to `exchange` (default: the default exchange, which routes to the queue named
like the routing key) with the routing key = its topic, `message_id` = its derived id, its
headers, and persistent delivery; `basic_publish` returns once the broker confirmed it, so the
relay marks only what the broker took.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from retrysafe._errors import ConfigurationError
from retrysafe._extras import missing_extra
from retrysafe.outbox._messages import OutboxMessage

if TYPE_CHECKING:
    import pika  # type: ignore[import-untyped]

__all__ = ["AmqpPublisher"]


class AmqpPublisher:
    """A relay publisher to RabbitMQ; connects on first use and again after a failure.

    Args:
        url: the broker, `amqp://user:password@host:5672/vhost` (or `amqps://`).
        exchange: the exchange to publish to (default: the default exchange, `""`).
        mandatory: ask the broker to return a message no queue takes; the publish then fails
            and the relay tries it again later (default: such a message is dropped).

    A broker that cannot be reached (or a connection lost) raises `ConnectionError`, which the
    relay reads as an outage, never as a refusal of the message.
    """

    def __init__(self, url: str, *, exchange: str = "", mandatory: bool = False) -> None:
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError(f"An AMQP URL starts with amqp:// or amqps://, not {url!r}.")
        self.url = url
        self.exchange = exchange
        self.mandatory = mandatory
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def __call__(self, message: OutboxMessage) -> None:
        """Publish `message` and wait for the broker's confirm."""
        pika = _pika()
        properties = pika.BasicProperties(
            message_id=message.message_id,
            headers=dict(message.headers) or None,
            delivery_mode=pika.DeliveryMode.Persistent,
            timestamp=int(message.created_at),
        )
        try:
            channel = self._open()
            channel.basic_publish(
                self.exchange,
                message.topic,
                message.payload,
                properties,
                mandatory=self.mandatory,
            )
        except pika.exceptions.AMQPConnectionError as error:  # out of reach, not a refusal
            self.close()
            reason = f"{type(error).__name__}: {error}"
            raise ConnectionError(f"The broker cannot be reached ({reason}).") from error
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection, if one is open."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # a broken connection: nothing to keep
                connection.close()

    def _open(self) -> Any:
        if self._channel is None or self._connection is None or not self._connection.is_open:
            pika = _pika()
            self.close()
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = connection.channel()
            channel.confirm_delivery()
            self._connection, self._channel = connection, channel
        return self._channel


def _pika() -> Any:
    """Import pika, or say how to install it."""
    try:
        import pika  # noqa: PLC0415 - optional: only the AMQP publisher needs it
    except ImportError as error:
        raise missing_extra("The outbox's AMQP publisher", "amqp", error) from error
    return pika
