"""How the CLI opens a store: `keys` never creates a SQLite file, and a PostgreSQL or MySQL
server that cannot be reached is reported at once, with the driver's own reason.

The PostgreSQL store's pool retries a failing connection until its `pool_timeout` (10 s) and
then says only "couldn't get a connection"; one direct connection first fails within
`PROBE_SECONDS` (or the URL's own `connect_timeout`) saying why: `database "x" does not
exist`, `Connection refused`, `password authentication failed`. The MySQL store says why
itself, but PyMySQL bounds only the TCP connect: a server that accepts the connection and never
greets (a wrong port: PostgreSQL's, Redis's, a stopped-up proxy) would hold the command
forever, so its probe bounds the greeting and the log-in too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from retrysafe.cli._common import EXIT_FAILURE, errors_as_one_line, fail
from retrysafe.stores import Store, open_store

__all__ = ["PROBE_SECONDS", "existing_store", "reach"]

PROBE_SECONDS: Final = 2
"""The probe's connect timeout, unless the URL sets one (libpq counts whole seconds, and waits
at least 2)."""
_POSTGRES: Final = frozenset({"postgresql", "postgres"})
# `open_store`'s options, not the PostgreSQL or MySQL store's
_REPLAY_CACHE: Final = "replay_cache"
_ENCRYPTION: Final = "encryption_key_env"


def reach(url: str) -> None:
    """Connect once to a PostgreSQL or MySQL store's server and hang up; other stores pass.

    Raises:
        StoreUnavailableError: the server cannot be reached, or refuses the connection; the
            message is the driver's.
        StoreError: the MySQL server refuses the log-in or the database (the driver's words).
        ConfigurationError: the URL is invalid.
    """
    parts = urlsplit(url)
    if parts.scheme not in _POSTGRES and parts.scheme != "mysql":
        return
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    theirs = [
        (name, value)
        for name, value in pairs
        if not name.startswith(_REPLAY_CACHE) and name != _ENCRYPTION
    ]
    backend = parts._replace(query=urlencode(theirs, quote_via=quote)).geturl()
    explicit = any(name == "connect_timeout" for name, _ in pairs)
    if parts.scheme == "mysql":
        _reach_mysql(backend, explicit=explicit)
    else:
        _reach_postgres(backend, explicit=explicit)


def _reach_postgres(url: str, *, explicit: bool) -> None:
    try:
        import psycopg  # noqa: PLC0415 - the postgres extra; the store says which to install

        from retrysafe.stores._sql.postgres_connection import (  # noqa: PLC0415
            parse_url,
            store_error,
        )
    except ImportError:
        return
    conninfo, options = parse_url(url)
    timeout = options.connect_timeout_seconds if explicit else PROBE_SECONDS
    try:
        psycopg.connect(conninfo, connect_timeout=timeout, autocommit=True).close()
    except psycopg.Error as error:
        raise store_error(error) from None


def _reach_mysql(url: str, *, explicit: bool) -> None:
    try:
        import pymysql  # type: ignore[import-untyped]  # noqa: PLC0415 - the mysql extra

        from retrysafe.stores._sql.mysql_connection import (  # noqa: PLC0415
            parse_url,
            store_error,
        )
    except ImportError:
        return
    options = parse_url(url)
    timeout = options.connect_timeout if explicit else PROBE_SECONDS
    tls = options.ssl_context()
    try:
        pymysql.connect(
            host=options.host,
            port=options.port,
            user=options.user,
            password=options.password,
            database=options.database,
            connect_timeout=timeout,
            read_timeout=timeout,  # the server's greeting and the log-in's answer
            write_timeout=timeout,
            **({"ssl_disabled": True} if tls is None else {"ssl": tls}),
        ).close()
    except pymysql.MySQLError as error:
        raise store_error(error) from None


@contextmanager
def existing_store(url: str) -> Iterator[Store]:
    """Open the store at `url` for the `keys` commands; errors are one line and an exit code.

    A SQLite file that does not exist is refused (exit 1) rather than created empty: a typo in
    the path would otherwise list nothing and leave a stray database behind.
    """
    with errors_as_one_line():
        store = open_store(url)  # validates the URL (exit 2) before the file is looked at
        try:
            _refuse_missing_sqlite(url)
            reach(url)
            yield store
        finally:
            store.close()


def _refuse_missing_sqlite(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        return
    # As the store reads it: "sqlite:///a.db" is the relative path "a.db", "sqlite:////a.db"
    # the absolute "/a.db".
    path = os.path.abspath(unquote(parts.path[1:]))
    if not os.path.exists(path):
        fail(
            f"No SQLite database at {path}: the keys commands read an existing store and "
            "never create one.",
            EXIT_FAILURE,
        )
