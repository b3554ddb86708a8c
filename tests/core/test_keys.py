"""Idempotency-Key parsing (B1-B4): strict and lenient forms, and precise refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retrysafe import InvalidKeyError
from retrysafe._keys import KeyPolicy, parse_key

STRICT = KeyPolicy(strict=True)


def test_b1_quoted_key_is_its_unescaped_content() -> None:
    """A quoted sf-string is accepted and its escapes are undone."""
    assert parse_key([b'"abc"']) == "abc"
    assert parse_key([b'"a\\"b\\\\c"']) == 'a"b\\c'
    assert parse_key([b'  "spaced"  ']) == "spaced"


def test_b1_parameters_after_the_string_are_ignored() -> None:
    """Structured-field parameters after a valid string are ignored (RFC 9651)."""
    assert parse_key([b'"abc";created=1;x']) == "abc"


def test_b2_lenient_bare_key_equals_quoted_form() -> None:
    """A bare value, as Stripe's SDKs send, is the same key as its quoted form."""
    bare = b"0ccb7813-e63d-4377-93c5-476cb93038f3"
    assert parse_key([bare]) == parse_key([b'"' + bare + b'"'])


def test_b2_strict_mode_refuses_bare_key() -> None:
    """Strict mode answers a bare value with an error."""
    with pytest.raises(InvalidKeyError, match="quoted string"):
        parse_key([b"0ccb7813"], STRICT)
    assert parse_key([b'"0ccb7813"'], STRICT) == "0ccb7813"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([b'"abc'], "no closing quote"),
        ([b'"a\\x"'], "invalid escape"),
        ([b'"abc" x'], "after the quoted string"),
        ([b'"abc"garbage'], "after the quoted string"),
        ([b'"caf\xc3\xa9"'], "printable ASCII"),
        ([b"bare\x00nul"], "printable ASCII"),
        ([b'"tab\there"'], "printable ASCII"),
        ([b'"a"', b'"b"'], "exactly once"),
        ([], "exactly once"),
        ([b'""'], "empty"),
        ([b""], "empty"),
        ([b"has space"], "without spaces"),
    ],
)
def test_b3_malformed_values_are_refused_precisely(values: list[bytes], message: str) -> None:
    """Each malformed form gets an InvalidKeyError that says what is wrong."""
    with pytest.raises(InvalidKeyError, match=message):
        parse_key(values)


def test_b3_non_string_items_are_refused_in_strict_mode() -> None:
    """Integers, tokens and byte sequences are not keys."""
    for value in (b"42", b"token", b":aGVsbG8=:"):
        with pytest.raises(InvalidKeyError):
            parse_key([value], STRICT)


def test_b4_length_limit() -> None:
    """Keys up to the limit pass; one character more is refused with the numbers."""
    assert parse_key([b"k" * 255]) == "k" * 255
    with pytest.raises(InvalidKeyError, match="256 characters long; the limit is 255"):
        parse_key([b"k" * 256])
    with pytest.raises(InvalidKeyError, match="limit is 8"):
        parse_key([b'"123456789"'], KeyPolicy(max_length=8))


def test_b4_format_policies() -> None:
    """The UUID-only and minimum-length policies refuse what they do not allow."""
    uuid_only = KeyPolicy(uuid_only=True)
    assert parse_key([b"0ccb7813-e63d-4377-93c5-476cb93038f3"], uuid_only)
    with pytest.raises(InvalidKeyError, match="UUID"):
        parse_key([b"not-a-uuid"], uuid_only)
    with pytest.raises(InvalidKeyError, match="at least 16"):
        parse_key([b"short"], KeyPolicy(min_length=16))


@given(st.lists(st.binary(max_size=40), max_size=3))
def test_b3_arbitrary_header_bytes_parse_or_fail_cleanly(values: list[bytes]) -> None:
    """Any header bytes give a printable ASCII key within the limit, or an InvalidKeyError."""
    try:
        key = parse_key(values)
    except InvalidKeyError:
        return
    assert 0 < len(key) <= 255
    assert key.isascii()
    assert key.isprintable()


@given(st.binary(max_size=40).map(lambda b: b'"' + b + b'"') | st.binary(max_size=42))
def test_b1_the_plain_string_shortcut_agrees_with_the_full_parser(raw: bytes) -> None:
    """Whatever the header holds, the key (or the refusal) is what RFC 9651's parser says: the
    shortcut for a plain quoted string changes only how fast it is found."""
    from http_sfv.item import Item
    from http_sfv.types import Token

    item = Item()
    try:
        item.parse(raw.strip(b" \t"))
        expected: str | None = (
            item.value
            if isinstance(item.value, str) and not isinstance(item.value, Token)
            else None
        )
    except ValueError:
        expected = None
    try:
        found: str | None = parse_key([raw], KeyPolicy(strict=True, max_length=1000))
    except InvalidKeyError:
        found = None
    assert found == (expected or None)
