"""Consumers deduplicated by message id: `idempotent_message` and its helpers (see the package
docstring)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, Unpack

from retrysafe._decorator import IdempotentOptions, idempotent
from retrysafe._errors import ConfigurationError, InvalidKeyError, KeyMismatchError, OutcomeError
from retrysafe._flow.observing import FacedObservers
from retrysafe.stores.base import AsyncStore, Store

__all__ = ["idempotent_message", "message_body_of", "message_id_of", "should_requeue"]

P = ParamSpec("P")
T = TypeVar("T")

# Errors that a redelivery cannot fix: the same message would fail the same way forever.
_PERMANENT = (InvalidKeyError, KeyMismatchError, OutcomeError, ConfigurationError)


def message_id_of(*args: Any, **kwargs: Any) -> str:
    """Return the message id of a handler's message, found among its arguments.

    The first argument with a non-empty `message_id` attribute wins: an aio-pika message, or
    the `properties` that pika passes to a callback. A message without an id cannot be
    deduplicated: `InvalidKeyError` (publishers must set `message_id`).
    """
    for value in (*args, *kwargs.values()):
        found = getattr(value, "message_id", None)
        if found:
            return str(found)
    raise InvalidKeyError(
        "The message has no message_id, so its deliveries cannot be told apart: publish it "
        "with a message_id, or pass idempotent_message(message_id=...) another key."
    )


def message_body_of(*args: Any, **kwargs: Any) -> bytes:
    """Return the body of a handler's message: the first `bytes` argument or `.body` attribute.

    This is the fingerprint: one message id published with two different bodies raises
    `KeyMismatchError` instead of replaying the wrong outcome.
    """
    for value in (*args, *kwargs.values()):
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        body = getattr(value, "body", None)
        if isinstance(body, bytes | bytearray | memoryview):
            return bytes(body)
    return b""


def should_requeue(error: BaseException) -> bool:
    """Return whether a delivery that raised `error` should go back to the queue.

    False for errors that a redelivery would hit again (no message id, a reused id with another
    body, an outcome that cannot be stored, a configuration error): reject those to a dead
    letter queue. True for everything else, `InFlightError` and store outages included.
    """
    return not isinstance(error, _PERMANENT)


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
