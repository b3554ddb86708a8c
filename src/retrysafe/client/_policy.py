"""When and how a client retries: `RetryPolicy`, and how it treats each method (`Handling`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from retrysafe.client._checks import check_policy

__all__ = ["DEFAULT_POLICY", "Handling", "RetryPolicy"]

# RFC 9110 section 9.2: safe and idempotent methods may be repeated without a key.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how a client retries.

    Attributes:
        attempts: the most attempts per logical request, the first included.
        timeout: the most seconds one logical request may take: attempts, waits and reading
            the body the client reads for the caller. A wait that would end past it is not
            started; an attempt or a body read still running at it ends with a ReadTimeout.
        wait_initial: the backoff ceiling before the first retry, in seconds.
        wait_max: the largest backoff ceiling; the ceiling doubles per retry up to it. The
            actual wait is drawn uniformly from [0, ceiling] ("full jitter").
        retry_after_max: the longest `Retry-After` honoured, in seconds; a longer one is cut
            to this. Like any wait, it is not started if it would end past `timeout`: the
            response is returned at once (with the defaults, a `Retry-After` of about 30 s or
            more, since the attempt took some of the 30 s).
        retry_statuses: the response statuses that are retried. 409 is retried only for
            requests that carry a key (it means "the first request with this key is still
            running"); a replayed response is never retried.
        key_methods: the methods that get an Idempotency-Key and are retried with it.
        key_header: the request header that carries the key.
        replay_header: the response header that marks a replayed outcome.
        quote_key: send a generated key as an RFC 9651 string (`"..."`), as the IETF draft
            specifies; False sends the bare UUID, as Stripe's SDKs do.
    """

    attempts: int = 5
    timeout: float = 30.0
    wait_initial: float = 0.1
    wait_max: float = 5.0
    retry_after_max: float = 30.0
    retry_statuses: frozenset[int] = frozenset({409, 429, 502, 503, 504})
    key_methods: frozenset[str] = frozenset({"POST", "PATCH"})
    key_header: str = "Idempotency-Key"
    replay_header: str = "Idempotent-Replayed"
    quote_key: bool = True

    def __post_init__(self) -> None:
        check_policy(self)  # a clear ConfigurationError for a value that cannot work
        object.__setattr__(self, "retry_statuses", frozenset(self.retry_statuses))
        object.__setattr__(self, "key_methods", frozenset(m.upper() for m in self.key_methods))

    def handling(self, method: str) -> Handling:
        """Return how a request with `method` is treated."""
        upper = method.upper()
        if upper in self.key_methods:
            return Handling.KEYED
        if upper in _IDEMPOTENT_METHODS:
            return Handling.RETRIED
        return Handling.PASSED


DEFAULT_POLICY = RetryPolicy()


class Handling(enum.Enum):
    """How the client treats a request, by its method."""

    KEYED = "keyed"
    """Gets an Idempotency-Key (unless it has one) and is retried with it."""
    RETRIED = "retried"
    """Safe or idempotent by RFC 9110: retried as is, without a key."""
    PASSED = "passed"
    """Neither: sent once, never retried."""
