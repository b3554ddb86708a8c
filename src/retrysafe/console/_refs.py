"""How the console's links and forms name a record (`ref`) and what a delete's confirmation saw
(`version`).

A browser rewrites the text of a form's fields when it posts them (a line feed becomes CR LF,
NUL becomes U+FFFD), and a URL cannot carry a lone surrogate, which the stores keep as it is.
So the pages never put a namespace, scope or key in a link or a form as text: a ref is each
part's UTF-8 bytes (a lone surrogate as its own three bytes, as the stores encode it) in
unpadded base64url, the parts joined by dots. It is ASCII letters, digits, `-`, `_` and `.`,
which nothing rewrites, and it decodes to the exact strings.

A version is a digest of a record's state and fencing token: a claim taken over by a retry
gets a new token, and a claim whose request finished is done, so a delete confirmed for one
record is refused for another one under the same identity.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from retrysafe._record import Identity, Record

__all__ = ["identity_ref", "parts_of", "ref", "version"]


def ref(*parts: str) -> str:
    """Return the ref of `parts` (a record's namespace, scope and key, or a namespace)."""
    return ".".join(
        base64.urlsafe_b64encode(part.encode("utf-8", "surrogatepass")).decode().rstrip("=")
        for part in parts
    )


def identity_ref(identity: Identity) -> str:
    """Return the ref that names a record."""
    return ref(identity.namespace, identity.scope, identity.key)


def parts_of(given: str, count: int) -> tuple[str, ...]:
    """Return the `count` strings that `given` (a ref) names.

    Raises:
        ValueError: `given` is not a ref of `count` parts.
    """
    pieces = given.split(".")
    if len(pieces) != count:
        raise ValueError(f"a ref of {count} parts has {count - 1} dots")
    try:
        return tuple(
            base64.b64decode(piece + "=" * (-len(piece) % 4), b"-_", validate=True).decode(
                "utf-8", "surrogatepass"
            )
            for piece in pieces
        )
    except (binascii.Error, UnicodeDecodeError) as error:
        raise ValueError(f"not base64url of UTF-8 text: {error}") from None


def version(record: Record) -> str:
    """Return the digest of `record`'s state and fencing token that a delete is bound to."""
    seen = f"{record.state.value}:{record.token}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(seen).hexdigest()[:16]
