"""Parsing the Idempotency-Key header (SPEC B1-B4), pure.

The draft defines the value as an RFC 9651 sf-string (`"abc"`). Stripe's SDKs send a bare value
(`0ccb7813-...`); lenient mode (the default) accepts it as the same key as its quoted form.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from http_sfv.item import Item
from http_sfv.types import Token

from retrysafe._errors import InvalidKeyError

__all__ = ["KeyPolicy", "key_text", "parse_key"]

# A bare key: visible ASCII without DQUOTE or backslash, which belong to the quoted form, and
# without a comma: a server or proxy joins repeated header lines with commas (RFC 9110 5.3), so
# `a,b` may be two keys. Quoted, a comma is one key's (`"a,b"`).
_BARE_KEY = re.compile(rb"[\x21\x23-\x2b\x2d-\x5b\x5d-\x7e]+")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
# The common sf-string: quotes around characters that need no escape, with no parameters. Its
# value is what the quotes hold, as the full parser would say, without its cost on every request.
_PLAIN_STRING = re.compile(rb'"([\x20\x21\x23-\x5b\x5d-\x7e]*)"')


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What a valid key looks like.

    Attributes:
        strict: accept only the quoted sf-string form (B2 strict mode).
        max_length: the longest key accepted, in characters (B4).
        min_length: the shortest key accepted.
        uuid_only: accept only keys that are UUIDs (B4 format policy).
    """

    strict: bool = False
    max_length: int = 255
    min_length: int = 1
    uuid_only: bool = False


def parse_key(values: Sequence[bytes], policy: KeyPolicy = KeyPolicy()) -> str:
    """Return the key carried by the Idempotency-Key header lines `values`.

    Raises:
        InvalidKeyError: the header is repeated, malformed, or breaks `policy`. The message is
            precise enough to show to the client.
    """
    if len(values) != 1:
        raise InvalidKeyError("The Idempotency-Key header must appear exactly once.")
    raw = values[0].strip(b" \t")
    if not _PRINTABLE.fullmatch(raw):
        raise InvalidKeyError("The Idempotency-Key header may contain only printable ASCII.")
    if not raw:
        raise InvalidKeyError("The Idempotency-Key must not be empty.")
    if raw.startswith(b'"'):
        plain = _PLAIN_STRING.fullmatch(raw)
        key = plain.group(1).decode("ascii") if plain else _parse_sf_string(raw)
    elif policy.strict:
        raise InvalidKeyError(
            'The Idempotency-Key header must be a quoted string, for example "8e03978e".'
        )
    elif _BARE_KEY.fullmatch(raw):
        key = raw.decode("ascii")
    elif b"," in raw and _BARE_KEY.fullmatch(raw.replace(b",", b"")):
        raise InvalidKeyError(
            "The Idempotency-Key header must appear exactly once (a bare value with a comma may "
            'be two header lines joined); send a key with a comma quoted, for example "a,b".'
        )
    else:
        raise InvalidKeyError(
            "The Idempotency-Key header must be a quoted string or a bare value without spaces."
        )
    _check_policy(key, policy)
    return key


def _parse_sf_string(raw: bytes) -> str:
    item = Item()
    try:
        item.parse(raw)
    except ValueError:
        raise InvalidKeyError(_describe_sf_error(raw)) from None
    if not isinstance(item.value, str) or isinstance(item.value, Token):
        raise InvalidKeyError("The Idempotency-Key header must be a string.")
    return item.value


def _describe_sf_error(raw: bytes) -> str:
    """Say what is wrong with a value that starts with a quote but is no sf-string."""
    index = 1
    while index < len(raw):
        char = raw[index : index + 1]
        if char == b"\\":
            if raw[index + 1 : index + 2] not in (b'"', b"\\"):
                return 'The Idempotency-Key string has an invalid escape (only \\" and \\\\).'
            index += 2
            continue
        if char == b'"':
            return "The Idempotency-Key header has unexpected text after the quoted string."
        index += 1
    return "The Idempotency-Key string has no closing quote."


def _check_policy(key: str, policy: KeyPolicy) -> None:
    if not key:
        raise InvalidKeyError("The Idempotency-Key must not be empty.")
    if len(key) > policy.max_length:
        raise InvalidKeyError(
            f"The Idempotency-Key is {len(key)} characters long; the limit is {policy.max_length}."
        )
    if len(key) < policy.min_length:
        raise InvalidKeyError(
            f"The Idempotency-Key must be at least {policy.min_length} characters long."
        )
    if policy.uuid_only:
        try:
            uuid.UUID(key)
        except ValueError:
            raise InvalidKeyError("The Idempotency-Key must be a UUID.") from None


def key_text(raw: object, what: str = "An idempotency key") -> str:
    """Return a key given in code as stored: a non-empty `str`, an `int` or a `UUID`.

    Raises:
        InvalidKeyError: anything else (`what` names it in the message).
    """
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, int | uuid.UUID) and not isinstance(raw, bool):
        return str(raw)
    raise InvalidKeyError(f"{what} must be a non-empty str, an int or a UUID, not {raw!r}.")
