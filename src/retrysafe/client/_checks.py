"""The checks of a `RetryPolicy`'s values: each one that cannot work is a `ConfigurationError`
when the policy is made, not a confusing failure (or silently no retries) at the first request:
an infinite or NaN number of seconds, a fractional attempt count, a status given as a string, a
method set given as one string ("POST" would be the methods P, O, S and T)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from retrysafe._errors import ConfigurationError

if TYPE_CHECKING:
    from retrysafe.client._policy import RetryPolicy

__all__ = ["check_policy"]


def check_policy(policy: RetryPolicy) -> None:
    """Raise `ConfigurationError` naming the first value of `policy` that cannot work."""
    if not (_number(policy.attempts, int) and policy.attempts >= 1):
        raise ConfigurationError(
            f"attempts must be a whole number, at least 1: {policy.attempts!r}"
        )
    if not (_number(policy.timeout) and policy.timeout > 0):
        raise ConfigurationError(f"timeout must be a positive, finite number: {policy.timeout!r}")
    waits = (policy.wait_initial, policy.wait_max, policy.retry_after_max)
    if not all(_number(wait) and wait >= 0 for wait in waits):
        raise ConfigurationError(f"waits must be finite numbers, not negative: {waits!r}")
    statuses, methods = policy.retry_statuses, policy.key_methods
    if isinstance(statuses, str | bytes) or not all(_number(s, int) for s in statuses):
        raise ConfigurationError(f"retry_statuses must be a set of int statuses: {statuses!r}")
    if isinstance(methods, str | bytes) or not all(isinstance(m, str) for m in methods):
        raise ConfigurationError(f"key_methods must be a set of method names: {methods!r}")
    if {400, 422} & set(statuses):
        raise ConfigurationError("400 and 422 are final answers and are never retried")


def _number(value: object, kind: type | tuple[type, ...] = (int, float)) -> bool:
    """Return whether `value` is a finite number of `kind` (a bool counts as none)."""
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    return math.isfinite(value)  # type: ignore[arg-type]
