"""Consumers deduplicated by message id: `idempotent_message` and its helpers (see the package
docstring)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, ParamSpec, TypeVar, Unpack

from retrysafe._decorator import IdempotentOptions, idempotent
from retrysafe._errors import (
    ConfigurationError,
    InFlightError,
    InvalidKeyError,
    KeyMismatchError,
    OutcomeError,
)
from retrysafe._flow.observing import FacedObservers
from retrysafe._outcomes import is_stored
from retrysafe.stores.base import AsyncStore, Store

__all__ = [
    "DEFAULT_REQUEUE_DELAY",
    "NATS_MSG_ID",
    "idempotent_message",
    "message_body_of",
    "message_id_of",
    "requeue_delay",
    "should_requeue",
]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_REQUEUE_DELAY: Final = 1.0
"""Seconds `requeue_delay` waits before a requeue, for an error that says no other time."""
NATS_MSG_ID: Final = "Nats-Msg-Id"
"""The header that carries a NATS message's id (JetStream's own publish deduplication reads it)."""

# Errors that a redelivery cannot fix: the same message would fail the same way forever.
_PERMANENT = (InvalidKeyError, KeyMismatchError, OutcomeError, ConfigurationError)


def message_id_of(*args: Any, **kwargs: Any) -> str:
    """Return the message id of a handler's message, found among its arguments.

    The first argument that carries an id wins: a non-empty `message_id` attribute (an aio-pika
    message, or the `properties` that pika passes to a callback), or a non-empty `Nats-Msg-Id`
    header (a NATS JetStream message, whose `headers` is a dict or None). A message without an
    id cannot be deduplicated: `InvalidKeyError` (publishers must set one).
    """
    nats = False
    for value in (*args, *kwargs.values()):
        found = getattr(value, "message_id", None)
        if found:
            return str(found)
        headers = getattr(value, "headers", None)
        if isinstance(headers, Mapping) and headers.get(NATS_MSG_ID):
            return str(headers[NATS_MSG_ID])
        nats = nats or _is_nats_message(value)
    if nats:
        raise InvalidKeyError(
            f"The NATS message has no {NATS_MSG_ID} header, so its deliveries cannot be told "
            f"apart: the publisher must set it, as js.publish(subject, body, "
            f'headers={{"{NATS_MSG_ID}": order_id}}), the same id on every re-publish; or pass '
            "idempotent_message(message_id=...) another key."
        )
    raise InvalidKeyError(
        "The message has no message_id, so its deliveries cannot be told apart: publish it "
        "with a message_id, or pass idempotent_message(message_id=...) another key."
    )


def message_body_of(*args: Any, **kwargs: Any) -> bytes:
    """Return the body of a handler's message: the first `bytes` argument, or `.body` (AMQP)
    or `.data` (NATS) attribute.

    This is the fingerprint: one message id published with two different bodies raises
    `KeyMismatchError` instead of replaying the wrong outcome.
    """
    for value in (*args, *kwargs.values()):
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        for name in ("body", "data"):
            body = getattr(value, name, None)
            if isinstance(body, bytes | bytearray | memoryview):
                return bytes(body)
    return b""


def _is_nats_message(value: object) -> bool:
    """Whether `value` looks like a NATS message (`nats.aio.msg.Msg`), without importing nats."""
    return isinstance(getattr(value, "data", None), bytes) and hasattr(value, "reply")


def should_requeue(error: BaseException) -> bool:
    """Return whether a delivery that raised `error` should go back to the queue.

    False for errors that a redelivery would hit again (no message id, a reused id with another
    body, an outcome that cannot be stored, a configuration error, and an exception of the
    handler's `final_exceptions`, stored as its outcome and replayed to every redelivery):
    reject those to a dead letter queue. True for everything else, `InFlightError` and store
    outages included.
    """
    return not isinstance(error, _PERMANENT) and not is_stored(error)


def requeue_delay(error: BaseException, default: float = DEFAULT_REQUEUE_DELAY) -> float:
    """Return how many seconds to wait before settling a delivery that raised `error`.

    RabbitMQ redelivers a requeued message at once, so a loop that requeues every failure
    straight away spins: through a store outage, thousands of deliveries a second. Wait this
    long first (JetStream's `nak(delay=...)` does the same on the broker's side): 0 for what
    `should_requeue` dead-letters (nothing to wait for), the `retry_after` of an
    `InFlightError` (another delivery of the message is running: its outcome may be stored by
    then), `default` for anything else.
    """
    if not should_requeue(error):
        return 0.0
    if isinstance(error, InFlightError):
        return float(error.retry_after)
    return default


def idempotent_message(
    store: Store | AsyncStore,
    *,
    message_id: Callable[..., object] = message_id_of,
    body: Callable[..., object] = message_body_of,
    **options: Unpack[IdempotentOptions],
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Make a message handler run once per message id; a redelivery replays its outcome.

    Args:
        store: a sync store for a sync handler (pika), an async store for an async one
            (aio-pika).
        message_id: a callable of the handler's arguments returning the key; by default the
            message's `message_id`.
        body: a callable of the handler's arguments returning the fingerprinted content; by
            default the message body.
        namespace: what separates this handler's message ids from other handlers'; default
            the handler's `module.QualifiedName`. Two handlers of one queue need two namespaces.
        scope: a fixed scope or a callable of the arguments (a tenant header).
        retention: seconds a message id is remembered; keep it longer than the longest time
            the broker or a publisher may deliver the message again.
        lease: seconds an in-flight delivery holds the id unless its heartbeat renews it; a
            consumer that dies lets a redelivery take over after this.
        wait: seconds a duplicate delivery waits for the first one to finish.
        final_exceptions: exception types stored as the handler's outcome and raised again on
            redelivery, rather than releasing the id for a retry.
        serializer: how return values are stored; default `JSONSerializer()`.
        observers: who to tell what each delivery did (`retrysafe.observe`); their face is
            "consumer".
    """
    options["observers"] = FacedObservers(options.get("observers", ()), face="consumer")
    return idempotent(store, key=message_id, fingerprint=body, **options)
