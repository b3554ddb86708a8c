"""Connections for the completer from a store URL: `sqlite:///path.db` or `postgresql://...`.

The URL is the store's, as every other command takes it: its `table` option names the records
table; the options of `open_store`'s wrappers (encryption, the replay cache) are not the
database's and are left out. Each call of the returned function opens one connection.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from retrysafe._errors import ConfigurationError
from retrysafe._extras import missing_extra
from retrysafe._urls import redact_url
from retrysafe.stores._sql import DEFAULT_TABLE

__all__ = ["connector"]

_SQLITE_TIMEOUT: Final = 30.0
_WRAPPER_OPTIONS: Final = ("encryption_key_env", "replay_cache")


def connector(url: str) -> tuple[Callable[[], Any], str]:
    """Return a function that opens a connection to the store at `url`, and its records table.

    Raises:
        ConfigurationError: the URL names neither SQLite nor PostgreSQL, or is malformed.
    """
    parts = urlsplit(url)
    pairs = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if not name.startswith(_WRAPPER_OPTIONS)
    ]
    options = dict(pairs)
    table = options.get("table", DEFAULT_TABLE)
    if parts.scheme == "sqlite" and not parts.netloc and len(parts.path) > 1:
        path, timeout = unquote(parts.path[1:]), float(options.get("timeout", _SQLITE_TIMEOUT))
        if not os.path.exists(path):
            raise ConfigurationError(
                f"No SQLite database at {os.path.abspath(path)}: the completer finishes an "
                "application's operations and never creates a database."
            )
        return (lambda: sqlite3.connect(path, timeout=timeout)), table
    if parts.scheme in ("postgresql", "postgres"):
        return _postgres(parts._replace(query=urlencode(pairs, quote_via=quote)).geturl())
    raise ConfigurationError(
        "The completer runs on sqlite:///path/to.db or postgresql://... stores, not "
        f"{redact_url(url)!r}."
    )


def _postgres(url: str) -> tuple[Callable[[], Any], str]:
    """Return the connector of a PostgreSQL store URL (its wrappers' options left out)."""
    try:
        import psycopg  # noqa: PLC0415 - the postgres extra

        from retrysafe.stores._sql.postgres_connection import parse_url  # noqa: PLC0415
    except ImportError as error:
        raise missing_extra("The completer on PostgreSQL", "postgres", error) from error
    conninfo, parsed = parse_url(url)
    seconds = parsed.connect_timeout_seconds  # a server that never answers fails the pass
    return (lambda: psycopg.connect(conninfo, connect_timeout=seconds)), parsed.table
