"""The retry rules shared by the httpx transports and the requests adapter (SPEC B32-B33), sans I/O.

A `_Call` is one logical request: it owns the Idempotency-Key, the deadline and the decisions
(retry or not, how long to wait, when to give up). The faces only send attempts and hand the
outcomes to tenacity, which runs the loop with the callbacks below. The callbacks also tell the
observers about each attempt once its fate is known (`client/_observe.py`).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import tenacity

from retrysafe._clock import Clock, doubled
from retrysafe._errors import NotReplayableError
from retrysafe._flow.observing import Observation
from retrysafe.client._headers import key_content, parse_retry_after
from retrysafe.client._observe import AttemptLog, observation
from retrysafe.client._policy import DEFAULT_POLICY, Handling, RetryPolicy
from retrysafe.client._urls import shown_url
from retrysafe.observe import Observer

__all__ = [
    "DEFAULT_POLICY",
    "Handling",
    "NotReplayableError",
    "RetryEvent",
    "RetryHook",
    "RetryPolicy",
    "is_replay",
]

logger = logging.getLogger("retrysafe.client")

_RetryLoop = TypeVar("_RetryLoop", bound=tenacity.BaseRetrying)

_TRUE_VALUES = frozenset({"true", "?1", "1"})


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """What a retry hook is told before the client waits and tries again.

    Attributes:
        method: the request method.
        url: the request URL fit to log: its user information and query values are `***`.
        attempt: the number of the attempt that just failed (1 for the first).
        delay: the seconds the client is about to wait.
        elapsed: the seconds spent on this logical request so far.
        error: the exception the attempt raised, or None if it got a response.
        status: the status of the response that is retried, or None after an exception.
        idempotency_key: the key every attempt carries, or None for a request without one.
    """

    method: str
    url: str
    attempt: int
    delay: float
    elapsed: float
    error: BaseException | None
    status: int | None
    idempotency_key: str | None

    @property
    def cause(self) -> str:
        """A short label of why the attempt failed: an exception name or `HTTP 503`."""
        if self.error is not None:
            return type(self.error).__name__
        return f"HTTP {self.status}"


RetryHook = Callable[[RetryEvent], None]
"""A callable told about each retry, for logging and metrics. Its exceptions propagate."""


class _HeaderLookup(Protocol):
    def get(self, key: str, /) -> str | None: ...


class _ResponseLike(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> _HeaderLookup: ...


_Sent = TypeVar("_Sent", bound=_ResponseLike)


def is_replay(response: _ResponseLike, header: str = DEFAULT_POLICY.replay_header) -> bool:
    """Return True if `response` (httpx or requests) replays a stored outcome.

    A replay means the server had already executed the request with this key and answered
    with its stored outcome; False means this attempt's execution (or a server without the
    header).
    """
    value = response.headers.get(header)
    return value is not None and value.strip().lower() in _TRUE_VALUES


class _MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


def _new_key() -> str:
    return str(uuid.uuid4())


@dataclass(slots=True)
class _Settings:
    """What a transport or adapter was built with, shared by each of its calls."""

    policy: RetryPolicy
    hooks: tuple[RetryHook, ...]
    clock: Clock
    rng: random.Random
    observation: Observation


def make_settings(
    policy: RetryPolicy,
    on_retry: Sequence[RetryHook],
    clock: Clock | None,
    rng: random.Random | None,
    observers: Sequence[Observer] = (),
) -> _Settings:
    """Bundle a face's constructor arguments."""
    return _Settings(
        policy=policy,
        hooks=tuple(on_retry),
        observation=observation(observers),
        clock=clock if clock is not None else _MonotonicClock(),
        rng=rng if rng is not None else random.Random(),  # noqa: S311 -- jitter, not a secret
    )


@dataclass(slots=True)
class _Call:
    """One logical request: its key, its deadline, and tenacity's callbacks."""

    settings: _Settings
    method: str
    url: str  # as shown in logs and errors, its secrets hidden (client/_urls.py)
    handling: Handling
    replayable: bool
    retried_error: Callable[[BaseException], bool]
    key: str | None = None
    header_value: str | None = None
    started: float = 0.0
    timed_out: bool = False  # an attempt was cut at the deadline: nothing is sent after it
    log: AttemptLog = field(init=False, repr=False)
    _retry_after: float | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        settings: _Settings,
        *,
        method: str,
        url: str,
        caller_key: str | bytes | None,
        replayable: bool,
        retried_error: Callable[[BaseException], bool],
        kept_key: str | None = None,
        started: float | None = None,
    ) -> _Call:
        """Begin a logical request; a KEYED one without a caller key gets `kept_key`, the key
        generated for the same operation before (the same request sent again, or the request a
        307 or 308 redirects), or a new UUIDv4. Its deadline is measured from `started`, when
        the request it continues (a 307 or 308 redirects) began, or from now."""
        policy = settings.policy
        handling = policy.handling(method)
        call = cls(
            settings=settings,
            method=method.upper(),
            url=shown_url(url),
            handling=handling,
            replayable=replayable,
            retried_error=retried_error,
            started=settings.clock.now() if started is None else started,
        )
        if handling is Handling.KEYED:
            if caller_key is not None:
                call.key = key_content(caller_key)
            else:
                call.key = kept_key or _new_key()
                call.header_value = f'"{call.key}"' if policy.quote_key else call.key
        call.log = AttemptLog(settings.observation, settings.clock, call.method, call.key)
        return call

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy of this call."""
        return self.settings.policy

    @property
    def generated_key(self) -> str | None:
        """The key if the client generated it (or kept one it generated), None otherwise."""
        return self.key if self.header_value is not None else None

    @property
    def deadline(self) -> float:
        """When the total-time bound ends, on the settings' clock."""
        return self.started + self.policy.timeout

    def remaining(self) -> float:
        """Seconds left before the total-time bound, never below one millisecond."""
        return max(self.deadline - self.settings.clock.now(), 0.001)

    def past_deadline(self) -> bool:
        """Whether the total-time bound has ended."""
        return self.settings.clock.now() >= self.deadline

    def retries_status(self, status: int, headers: _HeaderLookup) -> bool:
        """Return True if a response with `status` and `headers` is worth another attempt."""
        if status not in self.policy.retry_statuses:
            return False
        if status == 409 and self.handling is not Handling.KEYED:
            return False  # a conflict on PUT or DELETE is an answer, not "in flight"
        value = headers.get(self.policy.replay_header)
        return value is None or value.strip().lower() not in _TRUE_VALUES

    def stream_stops(self) -> bool:
        """Whether a failure a retry would follow ends the call as `not_replayable`
        instead: the body is a spent stream. Not an attempt cut at the deadline (B33), which
        is never retried and keeps its timeout error."""
        return not self.replayable and self.policy.attempts > 1 and not self.timed_out

    def not_replayable(self, error: BaseException) -> NotReplayableError:
        """The error raised when `error` would be retried but the body is a spent stream."""
        return NotReplayableError(
            f"{self.method} {self.url} failed ({type(error).__name__}: see __cause__) and was "
            "not retried: its body is a stream that cannot be sent again. Pass the body as bytes "
            "to make the request retryable."
        )

    @property
    def attempts(self) -> int:
        """How many attempts have begun."""
        return self.log.number

    def note_attempt(self) -> None:
        """Count an attempt (called at the start of each)."""
        self.log.begin()

    def once(self, send: Callable[[], _Sent]) -> _Sent:
        """Send the only attempt of a request that is not retried (`Handling.PASSED`)."""
        self.log.begin()
        try:
            response = send()
        except BaseException as error:
            self.log.last(None, error)
            raise
        self.log.last(response.status_code, None)
        return response

    # tenacity callbacks ---------------------------------------------------------------------

    def retry(self, state: tenacity.RetryCallState) -> bool:
        """Decide whether the last outcome is retried; tell observers of a last attempt."""
        retried = self._retries(state)
        if not retried:
            self.log.tell(None)
        return retried

    def _retries(self, state: tenacity.RetryCallState) -> bool:
        self._retry_after = None
        outcome = state.outcome
        if outcome is None:  # pragma: no cover -- tenacity always sets it before asking
            return False
        if outcome.failed:
            error = outcome.exception()
            self.log.end(None, error)
            return error is not None and self.retried_error(error)
        response = outcome.result()
        status: int = response.status_code
        headers: _HeaderLookup = response.headers
        self.log.end(status, None)
        if not self.replayable or not self.retries_status(status, headers):
            return False
        self._retry_after = parse_retry_after(headers.get("Retry-After"))
        return True

    def wait(self, state: tenacity.RetryCallState) -> float:
        """The wait before the next attempt: `Retry-After` (capped), else full jitter."""
        if self._retry_after is not None:
            return min(self._retry_after, self.policy.retry_after_max)
        ceiling = doubled(self.policy.wait_initial, state.attempt_number - 1, self.policy.wait_max)
        return self.settings.rng.uniform(0.0, ceiling)

    def stop(self, state: tenacity.RetryCallState) -> bool:
        """Give up after the last attempt, or when the wait would end past the deadline."""
        if self.timed_out or state.attempt_number >= self.policy.attempts:
            return True
        return self.settings.clock.now() + state.upcoming_sleep > self.deadline

    def before_sleep(self, state: tenacity.RetryCallState) -> None:
        """Tell the observers, the hooks and the log about the retry about to happen."""
        self.log.tell(state.upcoming_sleep)
        outcome = state.outcome
        assert outcome is not None  # noqa: S101 -- tenacity sets it before sleeping
        error = outcome.exception() if outcome.failed else None
        status = None if outcome.failed else outcome.result().status_code
        event = RetryEvent(
            method=self.method,
            url=self.url,
            attempt=state.attempt_number,
            delay=state.upcoming_sleep,
            elapsed=self.settings.clock.now() - self.started,
            error=error,
            status=status,
            idempotency_key=self.key,
        )
        logger.info(
            "retrying %s %s after attempt %d (%s) in %.3fs, Idempotency-Key %s",
            event.method,
            event.url,
            event.attempt,
            event.cause,
            event.delay,
            event.idempotency_key,
        )
        for hook in self.settings.hooks:
            hook(event)

    def give_up(self, state: tenacity.RetryCallState) -> Any:
        """The last outcome once retries are over: its response, or its exception raised."""
        self.log.tell(None)
        outcome = state.outcome
        assert outcome is not None  # noqa: S101 -- tenacity sets it before giving up
        return outcome.result()

    def retrying(self, loop: type[_RetryLoop], sleep: Callable[[float], Any]) -> _RetryLoop:
        """Return tenacity's retry loop, `loop` (`Retrying` or `AsyncRetrying`), driven by this
        call's callbacks and waiting with `sleep`."""
        return loop(
            sleep=sleep,
            retry=self.retry,
            wait=self.wait,
            stop=self.stop,
            before_sleep=self.before_sleep,
            retry_error_callback=self.give_up,
        )
