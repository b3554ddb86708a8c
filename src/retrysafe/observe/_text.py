"""Stored and client-chosen text made safe to write to a terminal or a log line."""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["printable"]

# Written as escapes: C0/C1 controls and DEL (Cc), format characters such as the bidi overrides
# U+202A-U+202E and U+2066-U+2069 or zero-width ones (Cf), lone surrogates (Cs), and the line
# and paragraph separators (Zl, Zp).
_HIDDEN: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str) -> str:
    """Return `text` with every control, format or separator character written as its Python
    escape (`\\x1b`, `\\n`, `\\u202e`, `\\ud800`), so that a client's key cannot steer a
    terminal nor start a forged log line; printable Unicode stays as it is (SPEC B35)."""
    if text.isprintable():
        return text
    return "".join(
        repr(char)[1:-1] if unicodedata.category(char) in _HIDDEN else char for char in text
    )
