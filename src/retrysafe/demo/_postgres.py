"""The demo tables on PostgreSQL: a small psycopg pool, shared with transactional writes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import urlsplit

from retrysafe._errors import ConfigurationError, StoreUnavailableError
from retrysafe._extras import missing_extra
from retrysafe._urls import redact_message
from retrysafe.demo._connections import LOCK_WAIT, Connections, pooled_transactions

__all__ = ["open_postgres"]

_PG_POOL_SIZE: Final = 8


def open_postgres(url: str) -> Connections:
    """Open a connection pool to the PostgreSQL database at `url` (a libpq URL, no options).

    Raises:
        ConfigurationError: the `postgres` extra is missing, or the URL is invalid.
        StoreUnavailableError: the database cannot be reached.
    """
    try:
        import psycopg  # noqa: PLC0415 -- an optional extra, imported when used
        from psycopg_pool import ConnectionPool  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - the extra is part of the test set-up
        message = str(missing_extra("The PostgreSQL demo", "postgres", error))
        raise ConfigurationError(message) from error
    try:
        pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=_PG_POOL_SIZE,
            open=False,
            timeout=10.0,
            kwargs={"connect_timeout": 5},
            configure=_lock_timeout,
        )
    except psycopg.Error as error:
        raise ConfigurationError(f"Invalid PostgreSQL URL: {_first_line(error, url)}") from error
    try:
        # Connect once up front, so a wrong host or database is one clear error at start-up.
        with psycopg.connect(url, connect_timeout=5):
            pass
        pool.open(wait=True, timeout=10.0)
    except (psycopg.Error, TimeoutError) as error:
        pool.close()
        message = f"Cannot reach PostgreSQL: {_first_line(error, url)}"
        raise StoreUnavailableError(message) from error

    @contextmanager
    def connect() -> Iterator[Any]:
        with pool.connection() as conn:  # commits on success, rolls back on error
            yield conn

    host = urlsplit(url).hostname or "localhost"
    return Connections(
        connect,
        pool.close,
        description=f"PostgreSQL on {host}",
        transactions=pooled_transactions(_PG_POOL_SIZE, pool.getconn, pool.putconn),
    )


def _lock_timeout(conn: Any) -> None:
    """Bound a wait on a row lock: a duplicate waits for the first request's commit."""
    conn.execute(f"SET lock_timeout = {int(LOCK_WAIT * 1000)}")
    conn.commit()


def _first_line(error: BaseException, url: str) -> str:
    """Return the first line of a libpq error about `url`, without its password (libpq quotes
    what it cannot parse, which may be the password or the whole URL)."""
    text = str(error).strip() or type(error).__name__
    return redact_message(text.splitlines()[0], url)
