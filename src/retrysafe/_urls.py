"""Printing URLs without their secrets: the one rule for every command, log line and error."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote, urlsplit

__all__ = ["ENCODE_HINT", "redact_message", "redact_url", "userinfo_cut"]

# Query options whose value is a secret: password, sslpassword, passwd, secret, token...
_SECRET_OPTION: Final = re.compile(r"pass|secret|token", re.IGNORECASE)
# What a driver's message quotes ('S3CRET', "postgresql://..."): an opening quote not inside
# a word (not the apostrophe of "can't"), up to the same quote.
_QUOTED: Final = re.compile(r"""(?<!\w)(["'])[^\n]*?\1(?!\w)""")
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:)(/{0,2})(?!/)")

ENCODE_HINT: Final = (
    "percent-encode these characters in the user name and password: "
    "'/' as %2F, '?' as %3F, '#' as %23, '@' as %40, ':' as %3A, '%' as %25, a space as %20"
)
"""How to write a password a URL can carry, for the errors about one that it cannot."""


def _userinfo(url: str) -> tuple[int, int] | None:
    """Return where the user info of `url` starts and ends, when a `/`, `?` or `#` in it (not
    percent-encoded) would end `urlsplit`'s netloc before its `@`: from after `scheme://` (or a
    malformed `scheme:/`) to the last `@`, if that part holds a `:`. Masking all of it may hide
    more than the password (an `@` in the query), never less. None: `urlsplit` is right."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return None
    start = scheme.end()
    at = url.rfind("@", start)
    if at < 0 or ":" not in url[start:at]:
        return None
    if len(scheme.group(2)) == 2:
        netloc_end = re.search(r"[/?#]", url[start:])
        if netloc_end is None or start + netloc_end.start() > at:
            return None  # every `@` is in the netloc: urlsplit splits it right
    return start, at


def redact_url(url: str) -> str:
    """Return `url` fit to print: the password of its `user:password@` part and the value of
    any query option named like a secret (`password=`, `sslpassword=`, `token=`) are `***`.
    A password holding an unencoded `/`, `?` or `#` is masked up to its last `@` (see
    `_userinfo`). A URL that cannot be parsed (`[::1` as a host) shows its scheme only."""
    cut = _userinfo(url)
    if cut is not None:
        start, at = cut
        name, colon, _ = url[start:at].partition(":")
        shown = f"{name}:***" if colon and not re.search(r"[/?#@]", name) else "***"
        rest = redact_url(f"x://{url[at + 1 :]}")[len("x://") :]
        return f"{url[:start]}{shown}@{rest}"
    try:
        parts = urlsplit(url)
    except ValueError:
        scheme, found, _ = url.partition("://")
        return f"{scheme}://(unparseable)" if found else "(unparseable)"
    netloc = parts.netloc
    user, at_sign, hosts = netloc.rpartition("@")
    if at_sign and ":" in user:
        netloc = f"{user.split(':', 1)[0]}:***@{hosts}"
    query = "&".join(
        f"{name}=***" if equals and _SECRET_OPTION.search(name) else f"{name}{equals}{value}"
        for name, equals, value in (pair.partition("=") for pair in parts.query.split("&"))
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as given: `geturl` would drop an empty authority's `//`
    scheme = url[: len(parts.scheme)]  # as written: `urlsplit` lowercases it
    shown = f"{scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    return shown + (f"#{parts.fragment}" if parts.fragment else "")


def userinfo_cut(url: str) -> bool:
    """Return whether an unencoded `/`, `?` or `#` in the user info of `url` makes `urlsplit`
    (and drivers parsing as it does) read part of the password as the port, path, query or
    fragment: an `@` after the netloc, outside the query, or in the query of a netloc that is
    no `host:port` (`:S3CRET`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if "@" in parts.path or "@" in parts.fragment:
        return True
    if "@" not in parts.query or "@" in parts.netloc:
        return False
    host, colon, port = parts.netloc.rpartition(":")
    return bool(colon) and not parts.netloc.endswith("]") and not (host and port.isdigit())


def redact_message(message: str, url: str) -> str:
    """Return a driver's `message` about `url` fit to print: the URL itself and its password
    (as written and percent-decoded) become `***`, and so does anything the driver quoted that
    holds an `@` or a part of the password (libpq and redis-py quote the text they could not
    parse: the password, a piece of it, or the whole URL). Other quoted text (a host) stays."""
    cut = _userinfo(url)
    if cut is not None:
        password = url[cut[0] : cut[1]].partition(":")[2]
    else:
        try:
            password = urlsplit(url).netloc.rpartition("@")[0].partition(":")[2]
        except ValueError:
            password = ""
    secrets = sorted({password, unquote(password)} - {""}, key=len, reverse=True)

    def masked(quoted: re.Match[str]) -> str:
        inside = quoted[0][1:-1]
        if "@" in inside or any(_shares(inside, secret) for secret in secrets):
            return f"{quoted[1]}***{quoted[1]}"
        return quoted[0]

    text = _QUOTED.sub(masked, message.replace(url, redact_url(url)))
    for secret in secrets:
        if len(secret) >= 3:  # a shorter one would mask letters of every word
            text = text.replace(secret, "***")
    return text


def _shares(text: str, secret: str) -> bool:
    """Return whether `text` holds any three characters in a row of `secret` (all of it, if
    shorter)."""
    size = min(3, len(secret))
    return any(secret[i : i + size] in text for i in range(len(secret) - size + 1))
