"""Request fingerprints (SPEC B12): what makes two requests with one key the same request."""

from __future__ import annotations

import hashlib
import json
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
    """
    try:
        value = json.loads(body)
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return canonical.encode()
    except (ValueError, RecursionError):  # UnicodeDecodeError and -EncodeError are ValueErrors
        return body


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
