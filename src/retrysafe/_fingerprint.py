"""Request fingerprints (SPEC B12): what makes two requests with one key the same request.

A fingerprint (or a scope) that this release computes otherwise than the previous one did, for
the same request, is a `Revised`: the current form, with the previous release's as `former`
(B39). The flow looks the former form up only when the current one finds nothing of its own
(`retrysafe._flow.admission.adopted`), so a retry across an upgrade is still the same request.
Only the few inputs whose form changed are revised: every other value is a plain `str`.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
from collections.abc import Iterable

from retrysafe._serializer import ORDER_FREE_MODEL, canonical_bytes, previous_canonical_bytes

__all__ = ["Revised", "canonical_json", "digest", "fingerprint_request", "fingerprint_value"]


class Revised(str):
    """A stored value (a fingerprint, a scope) in this release's form, holding the previous
    release's form of the same value as `former` (B39). Equal to, and stored as, the `str`
    it is; `former` is read only where the current form found no record of its own.

    Remove with the previous release's forms, one release after they changed (see
    docs/upgrading.md).
    """

    former: str

    def __new__(cls, current: str, former: str) -> Revised:
        revised = super().__new__(cls, current)
        revised.former = former
        return revised

    def __reduce__(self) -> tuple[type[Revised], tuple[str, str]]:
        # Copied and pickled with both forms (the default would pass `str.__new__` one).
        return (Revised, (str(self), self.former))


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
    return _canonical_forms(body)[0]


def _canonical_forms(body: bytes) -> tuple[bytes, bytes | None]:
    """Return `canonical_json(body)`, and the previous release's (0.1.0's) canonical form of
    `body` where that differs: a number a float does not hold exactly, which 0.1.0 read as the
    float (B39). None where it does not differ, or where 0.1.0 stored nothing (it failed)."""
    try:
        value = json.loads(body, parse_float=_exact_float, parse_constant=_inexact)
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return canonical.encode(), None
    except _InexactNumberError:
        return body, _previous_canonical(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError and -EncodeError are ValueErrors
        return body, None


def _previous_canonical(body: bytes) -> bytes | None:
    """Return 0.1.0's canonical form of a body with an inexact number, or None where 0.1.0
    failed on it. Remove one release after 0.1.0's records are gone (docs/upgrading.md)."""
    try:
        value = json.loads(body)
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        previous = text.encode()
    except (ValueError, RecursionError):
        return None
    return None if previous == body else previous


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
    verb, path = method.upper().encode(), target.encode("utf-8", "surrogateescape")
    if json_canonical:
        body, former = _canonical_forms(body)
        if former is not None:  # B39: as the previous release fingerprinted it, too
            return Revised(digest((verb, path, body)), digest((verb, path, former)))
    return digest((verb, path, body))


def fingerprint_value(value: object) -> str:
    """Return the fingerprint of a value (a decorated call's arguments): `bytes` as they are,
    anything else by its canonical encoding (`retrysafe._serializer.canonical_bytes`), revised
    where the previous release encoded it otherwise (B39).

    Raises:
        TypeError, ValueError, RecursionError: `value` cannot be encoded.
    """
    if isinstance(value, bytes):
        return digest((value,))
    current = canonical_bytes(value)
    fingerprint = digest((current,))
    if ORDER_FREE_MODEL not in current:  # the common case: one form
        return fingerprint
    former = previous_canonical_bytes(value)
    return fingerprint if former == current else Revised(fingerprint, digest((former,)))
