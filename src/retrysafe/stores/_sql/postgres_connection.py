"""How the PostgreSQL store reaches its server: the options of a store URL, and error mapping.

`parse_url` splits a `postgresql://` URL into the libpq conninfo and the store's own options;
`store_error` and `translate_errors` turn psycopg errors into retrysafe's, so no driver
exception leaves the store. Transactional mode maps errors on the caller's connection with
`store_error` too. `sync_executor` and `async_executor` pick where a store's hot statements
run: on pooled connections (None), or, for the async store, on its auto-pipeline
(`stores/_postgres_pipeline.py`, imported only when an async store asks for it). `LEFT_BEHIND`
keeps what a forked child's stores inherited from the parent and no longer use.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg_pool

from retrysafe._errors import (
    ConfigurationError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
)
from retrysafe._urls import ENCODE_HINT, redact_message, redact_url
from retrysafe.stores._sql import DEFAULT_TABLE, translated
from retrysafe.stores._sql.postgres import validate_table
from retrysafe.stores.base import check_timeouts, query_options

if TYPE_CHECKING:
    from retrysafe.stores._async.postgres_records import AsyncStatementRunner
    from retrysafe.stores._sync.postgres_records import StatementRunner

__all__ = [
    "LEFT_BEHIND",
    "PostgresOptions",
    "async_executor",
    "parse_url",
    "store_error",
    "sync_executor",
    "translate_errors",
]

# SQLSTATE classes that mean "the server is not there for us right now": connection exceptions,
# insufficient resources (too many connections), operator intervention (shutdown, cancel).
_UNAVAILABLE_CLASSES: Final = frozenset({"08", "53", "57"})


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """What a `postgresql://` URL configures besides the connection itself: the fields are the
    store's keyword arguments besides `conninfo` and `clock` (`from_url` passes them on as such).

    Attributes:
        table: the records table.
        connect_timeout: seconds to wait for a new connection.
        pool_min: connections kept open.
        pool_max: the most connections the pool opens.
        pool_timeout: seconds to wait for a pooled connection before the store is unavailable.
        autopipeline: whether the async store batches concurrent calls' statements.
        read_timeout: seconds a statement may wait for the server's reply before the call
            fails with `StoreUnavailableError` (`stores/_sql/postgres_deadline.py`).
    """

    table: str = DEFAULT_TABLE
    connect_timeout: float = 5.0
    pool_min: int = 1
    pool_max: int = 10
    pool_timeout: float = 10.0
    autopipeline: bool = True
    read_timeout: float = 30.0

    def __post_init__(self) -> None:
        """Refuse values the pool or the server would fail on later, less clearly."""
        validate_table(self.table)
        timeouts = ("connect_timeout", "pool_timeout", "read_timeout")
        check_timeouts("PostgreSQL", {name: getattr(self, name) for name in timeouts})
        if self.pool_min < 0 or self.pool_max < 1 or self.pool_min > self.pool_max:
            raise ConfigurationError(
                f"Need 0 <= pool_min <= pool_max and pool_max >= 1, "
                f"not pool_min={self.pool_min}, pool_max={self.pool_max}."
            )

    @property
    def connect_timeout_seconds(self) -> int:
        """Return `connect_timeout` as libpq takes it: whole seconds (libpq waits at least 2)."""
        return max(1, math.ceil(self.connect_timeout))


_OPTION_TYPES: Final[dict[str, type]] = {
    "table": str,
    "connect_timeout": float,
    "pool_min": int,
    "pool_max": int,
    "pool_timeout": float,
    "autopipeline": bool,
    "read_timeout": float,
}


def parse_url(url: str) -> tuple[str, PostgresOptions]:
    """Split a store URL into the libpq conninfo and the store's own options.

    The store's options (`table`, `connect_timeout`, `pool_min`, `pool_max`, `pool_timeout`,
    `autopipeline`, `read_timeout`) are removed; any other query parameter is a libpq one
    (`sslmode`, `application_name`) and stays in the conninfo, where libpq validates it now
    rather than at the first connection.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"A PostgreSQL store URL starts with postgresql://, not {redact_url(url)!r}."
        )
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    ours = [(name, value) for name, value in pairs if name in _OPTION_TYPES]
    theirs = [(name, value) for name, value in pairs if name not in _OPTION_TYPES]
    options = query_options(urlencode(ours), _OPTION_TYPES, url=url)
    # Spaces as %20, not +: libpq decodes percent escapes only (`options=-c%20lock_timeout=1s`).
    conninfo = urlunsplit(parts._replace(query=urlencode(theirs, quote_via=quote)))
    try:
        port = str(psycopg.conninfo.conninfo_to_dict(conninfo).get("port", ""))
    except psycopg.Error as error:
        # libpq quotes what it could not parse: the password, or the whole URL.
        reason = redact_message(str(error).strip().splitlines()[0], url)
    else:
        if any(char.isspace() for char in parts.netloc + parts.path):  # older libpq takes it
            reason = "a URL cannot hold a space or another blank"
        elif re.fullmatch(r"[\d,]*", port):
            return conninfo, PostgresOptions(**options)  # type: ignore[arg-type]
        else:
            reason = "its port is not a number"  # a `/` in the password ended the host early
    raise ConfigurationError(
        f"Invalid PostgreSQL store URL {redact_url(url)!r}: {reason}. The form is "
        f"postgresql://user:password@host:port/database; {ENCODE_HINT}."
    )


def store_error(error: psycopg.Error) -> StoreError:
    """Map a psycopg error to retrysafe's: unreachable or overloaded servers are unavailable."""
    if isinstance(error, psycopg_pool.PoolClosed):
        return StoreClosedError("This PostgreSQL store is closed.")
    sqlstate = error.sqlstate
    unreachable = isinstance(error, psycopg.OperationalError) and (
        sqlstate is None or sqlstate[:2] in _UNAVAILABLE_CLASSES
    )
    if unreachable:
        return StoreUnavailableError(f"PostgreSQL is unavailable: {error}")
    return StoreError(f"PostgreSQL failed: {error}")


def translate_errors() -> contextlib.AbstractContextManager[None]:
    """Re-raise any psycopg error as a StoreError, so no driver exception leaves the store."""
    return translated(psycopg.Error, store_error)


def sync_executor(conninfo: str, options: PostgresOptions) -> StatementRunner | None:
    """Return None: the sync store runs each statement on a pooled connection.

    A sync caller has one statement in flight at a time, so there is nothing to batch.
    """
    del conninfo, options
    return None


def async_executor(conninfo: str, options: PostgresOptions) -> AsyncStatementRunner | None:
    """Return the async store's auto-pipeline, or None to run each statement on a pooled one."""
    if not options.autopipeline:
        return None
    from retrysafe.stores._postgres_pipeline import AsyncStatementPipeline  # noqa: PLC0415

    return AsyncStatementPipeline(
        conninfo,
        connect_timeout=options.connect_timeout_seconds,
        read_timeout=options.read_timeout,
    )


class _LeftBehind:
    """What the PostgreSQL stores of a forked child inherited from its parent: pools (their
    connections and worker threads), auto-pipelines and read-deadline watchdogs.

    Their sockets are the parent's, so the child never uses them; nor does it close them:
    libpq's `PQfinish` would send a Terminate message on the socket, ending the parent's
    session. They are kept referenced here for the child's lifetime instead, so never finalized
    (as SQLAlchemy's `engine.dispose(close=False)` leaves the parent's connections alone; and
    were the child's exit to collect them, psycopg finishes a connection only in the process
    that opened it).
    `lock` makes a store leave its parent's behind once however many of the child's threads
    call it at once; each child gets a new one, since a thread of the parent may have held it.
    """

    __slots__ = ("kept", "lock")

    def __init__(self) -> None:
        self.kept: list[object] = []
        self.lock = threading.Lock()

    def keep(self, *inherited: object) -> None:
        """Keep `inherited` referenced, unused and open, for as long as this process lives."""
        self.kept.extend(inherited)

    def forked(self) -> None:
        self.lock = threading.Lock()


LEFT_BEHIND: Final = _LeftBehind()
os.register_at_fork(after_in_child=LEFT_BEHIND.forked)
