"""Request fingerprints (SPEC B12): what makes two requests with one key the same request."""

from __future__ import annotations

import decimal
import hashlib
import json
import math
from collections.abc import Iterable

__all__ = ["canonical_json", "digest", "fingerprint_request"]


def digest(parts: Iterable[bytes]) -> str:
    """Return the SHA-256 hex digest of `parts`, each length-prefixed so no two splits collide."""
    framed = []
    for part in parts:
        framed.append(len(part).to_bytes(8, "big"))
        framed.append(part)
    return hashlib.sha256(b"".join(framed)).hexdigest()  # one update: the same digest


def canonical_json(body: bytes) -> bytes:
    """Return `body` as canonical JSON (sorted keys, no whitespace), or unchanged if not JSON.

    A body that only parses into what cannot be written back (an escaped lone surrogate), or
    that nests too deep to parse, is not canonicalised either: its raw bytes are the fingerprint.
    Nor is one with a number that a float does not hold exactly (`0.10000000000000001`, which
    reads as `0.1`; `1e400`; `NaN`): two such bodies would read alike though an app that parses
    numbers as decimals sees two amounts. Every other body gives what it always gave (B39).
    """
    try:
        value = json.loads(body, parse_float=_exact_float, parse_constant=_inexact)
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return canonical.encode()
    except (ValueError, RecursionError):  # UnicodeDecodeError and -EncodeError are ValueErrors
        return body


class _InexactNumberError(ValueError):
    """A JSON number that a float would not hold exactly."""


def _exact_float(text: str) -> float:
    """Return the float a JSON number reads as, if it holds the number exactly (as a decimal)."""
    value = float(text)
    if not math.isfinite(value) or decimal.Decimal(text) != decimal.Decimal(repr(value)):
        raise _InexactNumberError(text)
    return value


def _inexact(name: str) -> float:
    """Refuse `NaN`, `Infinity` and `-Infinity`, which JSON does not have."""
    raise _InexactNumberError(name)


def fingerprint_request(
    method: str, target: str, body: bytes, *, json_canonical: bool = False
) -> str:
    """Return the fingerprint of an HTTP request: method, path with query, and body.

    Args:
        method: the request method, any case.
        target: the path with its query string.
        body: the raw request body.
        json_canonical: make JSON key order and whitespace irrelevant.
    """
    if json_canonical:
        body = canonical_json(body)
    return digest((method.upper().encode(), target.encode("utf-8", "surrogateescape"), body))
