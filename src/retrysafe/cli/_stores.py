"""How the CLI opens a store: `keys` never creates a SQLite file, and a PostgreSQL or MySQL
server that cannot be reached is reported at once, with the driver's own reason.

The PostgreSQL store's pool retries a failing connection until its `pool_timeout` (10 s) and
then says only "couldn't get a connection"; one direct connection first fails within
`PROBE_SECONDS` (or the URL's own `connect_timeout`) saying why: `database "x" does not
exist`, `Connection refused`, `password authentication failed`. The MySQL store says why
itself; its probe connects as the store does (`MySQLDriver`, which bounds the greeting and the
log-in too, for a server that accepts the connection and never greets: a wrong port,
PostgreSQL's, Redis's, a stopped-up proxy), within the same `PROBE_SECONDS`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

from retrysafe.cli._common import EXIT_FAILURE, errors_as_one_line, fail
from retrysafe.stores import Store, backend_url, open_store

__all__ = ["PROBE_SECONDS", "existing_store", "reach"]

PROBE_SECONDS: Final = 2
"""The probe's connect timeout, unless the URL sets one (libpq counts whole seconds, and waits
at least 2)."""
_POSTGRES: Final = frozenset({"postgresql", "postgres"})


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
    backend = backend_url(url)  # the store's own options, not `open_store`'s
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    explicit = any(name == "connect_timeout" for name, _ in pairs)
    if parts.scheme == "mysql":
        _reach_mysql(backend, explicit=explicit)
    else:
        _reach_postgres(backend, explicit=explicit)


def _reach_postgres(url: str, *, explicit: bool) -> None:
    try:
        import psycopg  # noqa: PLC0415 - the postgres extra; the store says which to install

        from retrysafe.stores._sql.postgres_connection import parse_url, store_error  # noqa: PLC0415
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

        from retrysafe.stores._sql.mysql_connection import parse_url, store_error  # noqa: PLC0415
        from retrysafe.stores._sql.mysql_io import MySQLDriver  # noqa: PLC0415
    except ImportError:
        return
    options = parse_url(url)
    if not explicit:
        options = dataclasses.replace(options, connect_timeout=PROBE_SECONDS)
    driver = MySQLDriver(options)
    try:
        driver.close(driver.connect())
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
