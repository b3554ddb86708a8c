"""What the client reads from headers: a `Retry-After` delay and the key a caller set."""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Callable

from retrysafe._errors import InvalidKeyError
from retrysafe._keys import parse_key

__all__ = ["key_content", "parse_retry_after"]


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Return the seconds a `Retry-After` value asks for, or None when absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None  # OverflowError, OSError: a year past what a C time_t holds
    if when.tzinfo is None:  # the asctime form: every HTTP date is UTC (RFC 9110 5.6.7)
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now())


def key_content(header_value: str | bytes) -> str:
    """The key a caller's header value carries (unquoted), or the raw value if malformed.

    requests takes a header value as bytes too; HTTP sends its bytes as they are (latin-1)."""
    text = header_value.decode("latin-1") if isinstance(header_value, bytes) else header_value
    try:
        return parse_key([text.encode("latin-1")])
    except (InvalidKeyError, UnicodeEncodeError):
        return text
