"""Printing URLs without their secrets: the one rule for every command, log line and error."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

__all__ = ["redact_url"]

# Query options whose value is a secret: password, sslpassword, passwd, secret, token...
_SECRET_OPTION: Final = re.compile(r"pass|secret|token", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return `url` fit to print: the password of its `user:password@` part and the value of
    any query option named like a secret (`password=`, `sslpassword=`, `token=`) are `***`.
    A URL that cannot be parsed (`[::1` as a host) shows its scheme only."""
    try:
        parts = urlsplit(url)
    except ValueError:
        scheme, found, _ = url.partition("://")
        return f"{scheme}://(unparseable)" if found else "(unparseable)"
    netloc = parts.netloc
    user, at, hosts = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.split(':', 1)[0]}:***@{hosts}"
    query = "&".join(
        f"{name}=***" if equals and _SECRET_OPTION.search(name) else f"{name}{equals}{value}"
        for name, equals, value in (pair.partition("=") for pair in parts.query.split("&"))
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as given: `geturl` would drop an empty authority's `//`
    shown = f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    return shown + (f"#{parts.fragment}" if parts.fragment else "")
