"""`jetstream_message`: a NATS JetStream handler whose effect happens once per message id, and
which settles each delivery itself: acknowledged once its outcome is stored, never before.

JetStream redelivers a message that was not acknowledged within the consumer's `ack_wait`, that
was `nak`ed, or whose consumer died. `idempotent_message` already turns those redeliveries into
replays; what is left is the acknowledgement discipline, which is easy to get subtly wrong:

- ack only after the handler returned (its outcome is stored by then), so a crash between the
  two costs a redelivery that replays, never a lost effect;
- while a handler runs, tell JetStream it is alive (`in_progress`, every third of `ack_wait`),
  or a slow handler's message is delivered again meanwhile. The in-progress acks run during the
  wait for a duplicate in flight too, so a waiting delivery is not redelivered in turn;
- hold the message id under a lease that outlasts JetStream's redelivery: a process paused
  (a GC pause, a blocked loop, a stopped VM) stops its in-progress acks and its lease renewals
  together, and JetStream redelivers after `ack_wait`. With the lease `ack_wait` too, the
  redelivery would find the id free and run the effect a second time; with three times
  `ack_wait`, it finds the id in flight, waits, and replays (or is nak'ed to come back);
- `term` what no redelivery can fix (no `Nats-Msg-Id`, one id re-used with another body, an
  outcome that cannot be stored, the handler's `final_exceptions`), so it is not redelivered
  forever; `nak` the rest, after a delay, so a store outage does not spin the consumer;
- a handler that `nak`s its own delivery asks for it again: its message id is released, not
  its outcome stored, so the redelivery runs it (one that `ack`s or `term`s it is stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, Concatenate, Final, ParamSpec, Protocol, TypeVar, Unpack

from retrysafe._clock import Clock, SystemClock
from retrysafe._concurrency import raise_if_cancelled
from retrysafe._decorator import (
    IdempotentOptions,
    callable_name,
    default_namespace,
    is_async_callable,
)
from retrysafe._errors import ConfigurationError, FencedError, InFlightError
from retrysafe._extras import missing_extra
from retrysafe._outcomes import Deferred, is_final
from retrysafe.consumers._messages import (
    idempotent_message,
    message_body_of,
    message_id_of,
    requeue_delay,
    should_requeue,
)
from retrysafe.stores.base import AsyncStore

__all__ = ["JetStreamMessage", "default_lease", "jetstream_message"]

P = ParamSpec("P")
MessageT = TypeVar("MessageT", bound="JetStreamMessage")

_LOGGER: Final = logging.getLogger("retrysafe.consumers")
DEFAULT_ACK_WAIT: Final = 30.0  # JetStream's own default for a consumer's ack_wait
DEFAULT_NAK_DELAY: Final = 1.0
LEASE_PER_ACK_WAIT: Final = 3
"""The default lease, in `ack_wait`s. Renewed every third of it, a lease has at least two
`ack_wait`s left when its process pauses, and JetStream redelivers at most one `ack_wait` after
the pause began: a pause up to two `ack_wait`s finds the id in flight. The cost: a message whose
consumer died is run again up to three `ack_wait`s after, not one (its redelivery meanwhile
waits, then is nak'ed for the rest of the lease)."""


class JetStreamMessage(Protocol):
    """What `jetstream_message` uses of a message: `nats.aio.msg.Msg` is one."""

    @property
    def subject(self) -> str: ...

    @property
    def reply(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str] | None: ...

    @property
    def is_acked(self) -> bool: ...

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None: ...

    async def term(self) -> None: ...

    async def in_progress(self) -> None: ...


def jetstream_message(
    store: AsyncStore,
    *,
    ack_wait: float = DEFAULT_ACK_WAIT,
    nak_delay: float = DEFAULT_NAK_DELAY,
    message_id: Callable[..., object] = message_id_of,
    body: Callable[..., object] = message_body_of,
    **options: Unpack[IdempotentOptions],
) -> Callable[
    [Callable[Concatenate[MessageT, P], Awaitable[object]]],
    Callable[Concatenate[MessageT, P], Coroutine[Any, Any, None]],
]:
    """Make an async JetStream handler run once per message id, and settle every delivery.

    The decorated handler takes the `nats.aio.msg.Msg` first (a callback for
    `js.subscribe(..., cb=handler, manual_ack=True)`, or called on each message a pull
    subscription fetched) and returns None once the delivery is settled: `ack` after the
    handler returned or replayed, `term` for an error that no redelivery fixes, `nak` (after
    `nak_delay` seconds) for any other. Errors are logged on `retrysafe.consumers`, not
    raised, and so is a settlement that fails (a closed connection: JetStream redelivers,
    and the redelivery replays). Cancellation settles nothing: JetStream redelivers after
    `ack_wait`.

    Args:
        store: an async store (`open_async_store`).
        ack_wait: seconds, the consumer's `ack_wait` (JetStream's default is 30): in-progress
            acks go every third of it while the handler runs or waits for a duplicate.
        nak_delay: seconds before JetStream redelivers a `nak`ed delivery; a delivery refused
            because another still holds the id (`InFlightError`) is redelivered once that
            one's lease has ended, plus `nak_delay`: one delivery of `max_deliver` while a dead
            consumer's lease runs out, not one a second.
        message_id: a callable of the handler's arguments returning the key; by default the
            `Nats-Msg-Id` header.
        body: a callable of the handler's arguments returning the fingerprinted content; by
            default the message's data.
        lease: seconds an in-flight delivery holds the id unless its heartbeat renews it;
            default three times `ack_wait` (`default_lease`), so a redelivery of a delivery
            whose process paused for up to two `ack_wait`s finds the id in flight and waits
            rather than running the effect again. A dead consumer's message is run again
            once the lease ends.
        **options: the rest of `idempotent_message`'s options (`namespace`, `scope`,
            `retention`, `wait`, `final_exceptions`, `serializer`, `observers`).
    """
    if ack_wait <= 0 or nak_delay < 0:
        raise ConfigurationError("ack_wait must be positive and nak_delay not negative.")
    not_jetstream = _not_jetstream_error()
    options.setdefault("lease", default_lease(ack_wait))
    final = options.get("final_exceptions", ())
    idempotent_message(store, message_id=message_id, body=body, **options)  # checks them now

    def decorate(
        handler: Callable[Concatenate[MessageT, P], Awaitable[object]],
    ) -> Callable[Concatenate[MessageT, P], Coroutine[Any, Any, None]]:
        if not is_async_callable(handler):
            raise ConfigurationError(
                f"jetstream_message needs an async handler; {callable_name(handler)} is not one."
            )
        named = options.copy()  # the handler's own name, not its wrapper's (`_deferring`)
        named["namespace"] = options.get("namespace") or default_namespace(handler)
        once = idempotent_message(store, message_id=message_id, body=body, **named)
        handle = once(_deferring(handler))
        clock = getattr(store, "clock", None) or SystemClock()

        @functools.wraps(handler)
        async def settle(msg: MessageT, /, *args: P.args, **kwargs: P.kwargs) -> None:
            where = _where(msg, not_jetstream)
            beat = asyncio.create_task(_in_progress(msg, ack_wait / 3, where))
            failed: Exception | None = None
            try:
                await handle(msg, *args, **kwargs)
            except Exception as error:
                failed = error
            finally:
                beat.cancel()  # before settling: no in-progress ack after the ack
            if failed is not None:
                delay = requeue_delay(failed, nak_delay)
                if isinstance(failed, InFlightError):
                    delay = _held_delay(failed, clock, nak_delay, options["lease"])
                await _settle_failure(msg, failed, where, final, delay)
            elif not msg.is_acked:  # the handler may have settled it itself
                await _settle(msg.ack, "ack", where)

        return settle

    return decorate


def default_lease(ack_wait: float) -> float:
    """Return the lease `jetstream_message` holds a message id under for `ack_wait`."""
    return LEASE_PER_ACK_WAIT * ack_wait


def _held_delay(error: InFlightError, clock: Clock, nak_delay: float, lease: float) -> float:
    """Return the seconds to nak a delivery that found its message id held (`InFlightError`,
    past its `wait`): the holder's lease left, plus `nak_delay`, so a dead consumer's message
    costs about one more delivery of `max_deliver`, not one every `retry_after` until the lease
    ends (up to three `ack_wait`s); its `retry_after` where the lease is not known. Never
    negative, nor longer than a lease granted now (a clock that jumped)."""
    if error.lease_expires_at is None:
        return requeue_delay(error, nak_delay)
    left = error.lease_expires_at - clock.now()
    return min(max(left, 0.0), lease) + nak_delay


async def _settle_failure(
    msg: JetStreamMessage,
    error: Exception,
    where: str,
    final: tuple[type[BaseException], ...],
    delay: float,
) -> None:
    """Settle a delivery whose handler raised: term, nak (after `delay`), or (fenced) ack."""
    if isinstance(error, Deferred):
        _LOGGER.info("%s: its handler nak'ed it; released for the redelivery", where)
    elif msg.is_acked:
        _LOGGER.warning("%s failed after its handler settled it", where, exc_info=error)
    elif isinstance(error, FencedError):
        # This delivery ran, and another took its id over and ran too: the newer outcome
        # stands and every redelivery replays it, so there is nothing left to deliver.
        _LOGGER.warning("%s: its lease was taken over; acknowledged", where, exc_info=error)
        await _settle(msg.ack, "ack", where)
    elif not should_requeue(error) or is_final(error, final):
        _LOGGER.error("%s terminated: a redelivery cannot fix it", where, exc_info=error)
        await _settle(msg.term, "term", where)
    else:
        _LOGGER.warning("%s nak'ed, redelivered in %ss", where, round(delay, 1), exc_info=error)
        await _settle(functools.partial(msg.nak, delay=delay or None), "nak", where)


def _deferring(
    handler: Callable[Concatenate[MessageT, P], Awaitable[object]],
) -> Callable[Concatenate[MessageT, P], Coroutine[Any, Any, object]]:
    """Wrap `handler` so that a delivery it `nak`ed itself raises `Deferred` once it returns:
    the message id is released, and the redelivery it asked for runs it again rather than
    replaying what it returned. A `term` or an `ack` of its own leaves the outcome stored."""

    @functools.wraps(handler)
    async def run(msg: MessageT, /, *args: P.args, **kwargs: P.kwargs) -> object:
        with _noting_nak(msg) as naked:
            outcome = await handler(msg, *args, **kwargs)
        if naked():
            raise Deferred("the handler nak'ed its delivery: it runs again on the redelivery")
        return outcome

    return run


@contextlib.contextmanager
def _noting_nak(msg: JetStreamMessage) -> Iterator[Callable[[], bool]]:
    """Note whether `msg.nak` is called, by shadowing it on the instance meanwhile: nats-py's
    `Msg` sets `is_acked` for an ack, a nak and a term alike. A message that takes no
    attribute (slotted, frozen) is not watched: its nak is taken for an ack, as before."""
    nak, naked = msg.nak, False

    async def noted(delay: float | None = None) -> None:
        nonlocal naked
        await nak(delay=delay)
        naked = True

    own = "nak" in getattr(msg, "__dict__", {})  # a message that had its own, as a test's
    try:
        setattr(msg, "nak", noted)  # noqa: B010 - mypy refuses assigning to a method
    except (AttributeError, TypeError):
        yield lambda: False
        return
    try:
        yield lambda: naked
    finally:
        if own:
            setattr(msg, "nak", nak)  # noqa: B010 - as above
        else:
            delattr(msg, "nak")


async def _settle(call: Callable[[], Awaitable[None]], verb: str, where: str) -> None:
    """Settle a delivery; log a failure (a closed connection) instead of raising it.

    Nothing is lost: the outcome (or the released claim, for a nak) is stored before the
    delivery is settled, so JetStream redelivers the message after `ack_wait` and the
    redelivery replays the outcome, or runs the handler again, and settles it again.
    """
    try:
        await call()
    except Exception as error:
        _LOGGER.warning(
            "%s: %s failed, JetStream redelivers it after ack_wait: %r", where, verb, error
        )
    raise_if_cancelled()  # cancelled during the call by a client that kept it quiet


async def _in_progress(msg: JetStreamMessage, every: float, where: str) -> None:
    """Tell JetStream every `every` seconds that the delivery is still being worked on."""
    while True:
        await asyncio.sleep(every)
        try:
            await msg.in_progress()
        except Exception as error:  # a closed connection: the next one may pass
            _LOGGER.warning("%s: in-progress ack failed: %r", where, error)
        raise_if_cancelled()  # cancelled during the ack by a client that kept it quiet


def _where(msg: JetStreamMessage, not_jetstream: type[Exception]) -> str:
    """Describe a delivery for log lines; refuse a message that JetStream did not deliver."""
    try:
        metadata: Any = getattr(msg, "metadata", None)
    except not_jetstream as error:
        raise ConfigurationError(
            f"The message on {msg.subject!r} was not delivered by JetStream (reply "
            f"{msg.reply!r}), so it cannot be acknowledged: subscribe with js.subscribe or "
            "js.pull_subscribe, not nc.subscribe."
        ) from error
    if metadata is None:
        return f"message on {msg.subject!r}"
    with contextlib.suppress(AttributeError):
        return (
            f"message {metadata.stream}#{metadata.sequence.stream} on {msg.subject!r}"
            f" (delivery {metadata.num_delivered})"
        )
    return f"message on {msg.subject!r}"


def _not_jetstream_error() -> type[Exception]:
    """Return nats-py's error for a message without a JetStream reply subject."""
    try:
        from nats.errors import NotJSMessageError  # noqa: PLC0415 - only with the nats extra
    except ImportError as error:
        raise missing_extra("retrysafe.consumers.jetstream_message", "nats", error) from error
    return NotJSMessageError
