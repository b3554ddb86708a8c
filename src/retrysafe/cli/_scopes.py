"""Scopes as `keys list` shows them, and back: a hashed scope is shown by its first hex digits,
and a unique start of its hash names it (`c:923b541a…`, `c:923b541a`, `923b541a`).

The HTTP middleware's scopes are a kind and a keyed hash, `c:<64 hex>` or `p:<64 hex>`
(SPEC B8), 66 characters that would take most of a terminal's width; the first 8 hex digits
tell scopes apart as well as a git commit's first 7 do. Other scopes (a decorator's, a
tenant id) are shown whole, and only their whole value names them: `tenant-1` must never
stand for `tenant-10`.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MIN_HEX", "SHOWN_HEX", "scope_matches", "short_scope"]

SHOWN_HEX: Final = 8
"""Hex digits of a hashed scope shown by `keys list`."""
MIN_HEX: Final = 4
"""The fewest hex digits of a hash that name a scope (as git asks of a commit)."""
_HASHED: Final = re.compile(r"([a-z]+):([0-9a-f]{16,})")
_KIND: Final = re.compile(r"[a-z]+:")
_ELLIPSES: Final = ("…", "...")


def short_scope(scope: str) -> str:
    """Return `scope` as the listing shows it: a hashed scope shortened, others as they are."""
    match = _HASHED.fullmatch(scope)
    if match is None:
        return scope
    return f"{match.group(1)}:{match.group(2)[:SHOWN_HEX]}…"


def scope_matches(scope: str, given: str) -> bool:
    """Whether `given` (typed after `--scope`) names the hashed `scope` by a start of it.

    `given` is the kind and at least MIN_HEX digits of the hash (`c:923b`), or the digits
    alone (`923b`); a trailing ellipsis is ignored, so a scope copied from the listing works.
    A scope that is not a hash never matches: only its whole value names it.
    """
    match = _HASHED.fullmatch(scope)
    if match is None:
        return False
    prefix = _without_ellipsis(given)
    kind = _KIND.match(prefix)
    if kind is not None:
        if kind.group(0) != f"{match.group(1)}:":
            return False
        prefix = prefix[kind.end() :]
    return len(prefix) >= MIN_HEX and match.group(2).startswith(prefix)


def _without_ellipsis(given: str) -> str:
    for ellipsis in _ELLIPSES:
        if given.endswith(ellipsis):
            return given[: -len(ellipsis)]
    return given
