"""Publishing outbox messages to RabbitMQ (AMQP 0-9-1) with publisher confirms, through pika.

Each message goes to `exchange` (default: the default exchange, which routes to the queue named
like the routing key) with the routing key = its topic, `message_id` = its derived id, its
headers, and persistent delivery; `basic_publish` returns once the broker confirmed it, so the
relay marks only what the broker took.

pika's blocking calls wait for the broker without a bound of their own (only its heartbeat ends
a stalled link, after about two minutes). Each wait here is bounded by `confirm_timeout`: past it,
the connection is torn down and the publish raises `ConnectionError`. The broker may have taken
the message then, so it stays unpublished and is published again (at least once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from retrysafe._errors import ConfigurationError
from retrysafe._extras import missing_extra
from retrysafe._urls import redact_url
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
        confirm_timeout: the most seconds one publish waits for the broker's confirm (and
            opening a channel for its answer; a blocked connection, for the broker to unblock
            it, unless the URL sets `blocked_connection_timeout`).

    A broker that cannot be reached, a connection lost, or a confirm that does not come in time
    raises `ConnectionError`, which the relay reads as an outage, never as a refusal of the
    message. Connecting is bounded by pika's own `socket_timeout` and `stack_timeout` (URL
    options; 10 s and 15 s by default).
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: str = "",
        mandatory: bool = False,
        confirm_timeout: float = 10.0,
    ) -> None:
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError(
                f"An AMQP URL starts with amqp:// or amqps://, not {redact_url(url)!r}."
            )
        if not confirm_timeout > 0:
            raise ConfigurationError(f"Need confirm_timeout > 0, not {confirm_timeout!r}.")
        self.url = url
        self.exchange = exchange
        self.mandatory = mandatory
        self.confirm_timeout = confirm_timeout
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
            with self._bounded(self._connection):
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
            raise ConnectionError(
                f"The broker cannot be reached or does not answer ({reason})."
            ) from error
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
            parameters = pika.URLParameters(self.url)
            if parameters.blocked_connection_timeout is None:
                parameters.blocked_connection_timeout = self.confirm_timeout
            self._connection = connection = pika.BlockingConnection(parameters)
            with self._bounded(connection):
                channel = connection.channel()
                channel.confirm_delivery()
            self._channel = channel
        return self._channel

    @contextlib.contextmanager
    def _bounded(self, connection: Any) -> Iterator[None]:
        """Tear the connection down if the broker has not answered within `confirm_timeout`:
        the blocking call inside then raises pika's `AMQPConnectionError`.

        pika's `BlockingConnection` bounds none of its calls, and runs only its own I/O loop's
        timers while one waits; so the timer is on that loop, and it ends the connection as
        pika's `blocked_connection_timeout` does (`_terminate_stream`).
        """
        impl = connection._impl  # private: see above
        seconds = self.confirm_timeout

        def expire() -> None:
            text = f"The broker did not answer within {seconds:g}s (confirm_timeout)"
            impl._terminate_stream(_pika().exceptions.AMQPConnectionError(text))

        timer = impl.ioloop.call_later(seconds, expire)
        try:
            yield
        finally:
            impl.ioloop.remove_timeout(timer)


def _pika() -> Any:
    """Import pika, or say how to install it."""
    try:
        import pika  # noqa: PLC0415 - optional: only the AMQP publisher needs it
    except ImportError as error:
        raise missing_extra("The outbox's AMQP publisher", "amqp", error) from error
    return pika
