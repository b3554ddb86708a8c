"""Connections for the completer from a store URL: `sqlite:///path.db` or `postgresql://...`.

The URL is the store's, as every other command takes it: its `table` option names the records
table; `encryption_key_env` names the environment variable of the keys, read as `open_store`
reads it, which the returned `Connector` carries to the completer (it seals and opens what it
stores and reads with them), as it carries a PostgreSQL URL's `read_timeout` (`ReadDeadline`,
armed over the completer's own statements and commits: a stalled server fails the pass); the
replay cache's options are a store's, not the database's, and are left out. Each call of the
returned `Connector` opens one connection: a PostgreSQL one in autocommit, and a SQLite one in
`sqlite3`'s default mode, where a read opens no transaction.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from retrysafe._encryption import Keyring
from retrysafe._errors import ConfigurationError
from retrysafe._extras import missing_extra
from retrysafe._urls import redact_url
from retrysafe.stores import _encryption_option
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.stores._sql.postgres_deadline import ReadDeadline

__all__ = ["Connector", "connector"]

_SQLITE_TIMEOUT: Final = 30.0
_WRAPPER_OPTIONS: Final = ("replay_cache",)


@dataclass(frozen=True, slots=True)
class Connector:
    """Opens one connection to a store's database per call, and carries the store's keys.

    Attributes:
        open: opens one connection.
        encryption: the keys of the store URL's `encryption_key_env` (None: in clear); a
            `Completer` given this connector uses them.
        deadline: on PostgreSQL, the store URL's `read_timeout` (default 30 s): a `Completer`
            arms it over its own statements and commits, so a stalled server fails the pass.
    """

    open: Callable[[], Any]
    encryption: Keyring | None = None
    deadline: ReadDeadline | None = None

    def __call__(self) -> Any:
        return self.open()


def connector(url: str) -> tuple[Connector, str]:
    """Return a `Connector` to the store at `url`, with the keys its URL names, and its
    records table.

    Raises:
        ConfigurationError: the URL names neither SQLite nor PostgreSQL, or is malformed; or
            its `encryption_key_env` variable holds no valid keys.
    """
    url, keyring = _encryption_option(url, None)
    connect, table, deadline = _connect(url)
    return Connector(connect, keyring, deadline), table


def _connect(url: str) -> tuple[Callable[[], Any], str, ReadDeadline | None]:
    """Return a function that opens a connection to the store at `url` (without its keys)."""
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
        return (lambda: sqlite3.connect(path, timeout=timeout)), table, None
    if parts.scheme in ("postgresql", "postgres"):
        return _postgres(parts._replace(query=urlencode(pairs, quote_via=quote)).geturl())
    raise ConfigurationError(
        "The completer runs on sqlite:///path/to.db or postgresql://... stores, not "
        f"{redact_url(url)!r}."
    )


def _postgres(url: str) -> tuple[Callable[[], Any], str, ReadDeadline]:
    """Return the connector of a PostgreSQL store URL (its wrappers' options left out)."""
    try:
        import psycopg  # noqa: PLC0415 - the postgres extra

        from retrysafe.stores._sql.postgres_connection import parse_url  # noqa: PLC0415
    except ImportError as error:
        raise missing_extra("The completer on PostgreSQL", "postgres", error) from error
    conninfo, parsed = parse_url(url)
    seconds = parsed.connect_timeout_seconds  # a server that never answers fails the pass
    # In autocommit, as the application's connections are in the docs: a builder that reads
    # (the customer's card) leaves no transaction open, which atomic phases would refuse.
    connect = lambda: psycopg.connect(conninfo, connect_timeout=seconds, autocommit=True)  # noqa: E731
    return connect, parsed.table, ReadDeadline(parsed.read_timeout)
