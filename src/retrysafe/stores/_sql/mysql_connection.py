"""How the MySQL store reaches its server: the options of a store URL, sessions, error mapping.

`parse_url` reads `mysql://user[:password]@host[:port]/db?table=...` into `MySQLOptions`;
`SESSION_SETUP` is what every connection of the store runs first; `store_error` and
`translate_errors` turn driver errors into retrysafe's, so no driver exception leaves the
store, and `deadlocked` tells which errors the store retries. Transactional mode maps errors on
the caller's connection with `store_error` too. aiomysql raises PyMySQL's exception classes, so
one mapping serves both faces; nothing here opens a connection. The classes are PyMySQL's
top-level names, bound when it was imported: in a Django process, `pymysql.install_as_MySQLdb()`
and Django's `MySQLdb` imports load a second copy of `pymysql.err`, whose classes PyMySQL's
errors are not instances of.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from ssl import SSLContext, create_default_context
from typing import Final, NotRequired, TypedDict
from urllib.parse import unquote, urlsplit

import pymysql  # type: ignore[import-untyped]

from retrysafe._errors import ConfigurationError, StoreError, StoreUnavailableError
from retrysafe._urls import redact_url
from retrysafe.stores._sql import DEFAULT_TABLE, translated
from retrysafe.stores._sql.mysql import validate_table
from retrysafe.stores.base import check_timeouts, query_options

__all__ = [
    "DEADLOCK",
    "LOCK_WAIT_TIMEOUT",
    "MySQLArguments",
    "MySQLOptions",
    "connection_lost",
    "deadlocked",
    "parse_url",
    "session_setup",
    "store_error",
    "translate_errors",
]

DEADLOCK: Final = 1213  # ER_LOCK_DEADLOCK: InnoDB rolled the whole transaction back
LOCK_WAIT_TIMEOUT: Final = 1205  # ER_LOCK_WAIT_TIMEOUT: only the statement was rolled back

# Server errors that mean "not there for us right now": too many connections, shutting down,
# network errors, a killed connection or query, lock waits that ran out (1205, and 1213 once the
# store's retries are spent). Client errors (2000 to 2999) are all about the link.
_UNAVAILABLE: Final = frozenset(
    {1040, 1053, 1077, 1152, 1154, 1156, 1157, 1158, 1159, 1160, 1161, 1205, 1213, 1317, 1927}
    | {3024, 4031}
)
_CLIENT_ERRORS: Final = range(2000, 3000)
# Every server since MySQL 5.7 and MariaDB 10.2 knows these two modes; STRICT makes a value too
# long for its column an error, never a silent truncation of a key.
_SQL_MODE: Final = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION"
_URL_FORM: Final = "mysql://user[:password]@host[:port]/db"


class MySQLArguments(TypedDict):
    """The keyword arguments of `AsyncMySQLStore` and `MySQLStore` besides `clock`.

    They are `MySQLOptions`'s fields, which the store builds from them (and which checks them);
    the store's docstring documents each.
    """

    host: str
    user: str
    database: str
    password: NotRequired[str]
    port: NotRequired[int]
    table: NotRequired[str]
    connect_timeout: NotRequired[float]
    pool_max: NotRequired[int]
    pool_timeout: NotRequired[float]
    lock_timeout: NotRequired[int | None]
    read_timeout: NotRequired[float | None]
    ssl: NotRequired[bool]
    ssl_ca: NotRequired[str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class MySQLOptions:
    """Where a MySQL store connects, and how, checked: the store's keyword arguments.

    The fields are exactly `MySQLArguments`, the arguments of `AsyncMySQLStore` (and
    `MySQLStore`), so that a store is built from a URL's options as they are (`from_url`).
    """

    host: str
    user: str
    database: str
    password: str = ""
    port: int = 3306
    table: str = DEFAULT_TABLE
    connect_timeout: float = 5.0
    pool_max: int = 10
    pool_timeout: float = 10.0
    lock_timeout: int | None = None
    read_timeout: float | None = None
    ssl: bool = False
    ssl_ca: str | None = None

    def __post_init__(self) -> None:
        """Refuse values the pool or the server would fail on later, less clearly."""
        validate_table(self.table)
        timeouts = {"connect_timeout": self.connect_timeout, "pool_timeout": self.pool_timeout}
        if self.read_timeout is not None:
            timeouts["read_timeout"] = self.read_timeout
        check_timeouts("MySQL", timeouts)
        if self.pool_max < 1:
            raise ConfigurationError(f"pool_max must be at least 1, not {self.pool_max}.")
        if self.lock_timeout is not None and not 1 <= self.lock_timeout <= 1073741824:
            raise ConfigurationError(
                f"lock_timeout is whole seconds from 1 to 1073741824, not {self.lock_timeout}."
            )
        if self.read_timeout is not None and not self.read_timeout > (self.lock_timeout or 0):
            raise ConfigurationError(
                "read_timeout must be positive seconds, and longer than lock_timeout (a lock wait "
                f"would otherwise end as a lost connection), not {self.read_timeout}."
            )
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"Invalid MySQL port {self.port}.")

    @property
    def reply_timeout(self) -> float:
        """Return the seconds a statement may wait for its reply: `read_timeout`, or by default
        30 more than the lock wait (`lock_timeout`, else InnoDB's default of 50 s): 80 s."""
        if self.read_timeout is not None:
            return self.read_timeout
        return (self.lock_timeout or _INNODB_LOCK_WAIT) + _REPLY_MARGIN

    def ssl_context(self) -> SSLContext | None:
        """Return the TLS context to connect with, or None for a plain connection."""
        if self.ssl_ca is not None:
            return create_default_context(cafile=self.ssl_ca)
        return create_default_context() if self.ssl else None


_INNODB_LOCK_WAIT: Final = 50  # InnoDB's default innodb_lock_wait_timeout, seconds
_REPLY_MARGIN: Final = 30.0  # the default read timeout's seconds beyond the lock wait


_OPTION_TYPES: Final[dict[str, type]] = {
    "table": str,
    "connect_timeout": float,
    "pool_max": int,
    "pool_timeout": float,
    "lock_timeout": int,
    "read_timeout": float,
    "ssl": bool,
    "ssl_ca": str,
}


def parse_url(url: str) -> MySQLOptions:
    """Read a `mysql://user[:password]@host[:port]/db?option=...` store URL.

    The user, the password and the database are percent-decoded. Options in the query string:
    `table`, `connect_timeout`, `pool_max`, `pool_timeout`, `lock_timeout`, `read_timeout`,
    `ssl`, `ssl_ca`; anything else is refused.
    """
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme != "mysql":
        raise ConfigurationError(f"A MySQL store URL is {_URL_FORM}, not {shown!r}.")
    if parts.fragment:
        raise ConfigurationError(f"A MySQL store URL has no '#' fragment: {shown!r}.")
    if not parts.hostname:
        raise ConfigurationError(f"A MySQL store URL names a host, {_URL_FORM}: {shown!r}.")
    if not parts.username:
        raise ConfigurationError(f"A MySQL store URL names a user, {_URL_FORM}: {shown!r}.")
    try:
        port = parts.port or 3306
    except ValueError:
        raise ConfigurationError(f"Invalid port in MySQL store URL {shown!r}.") from None
    database = unquote(parts.path[1:])
    if not database or "/" in database:
        raise ConfigurationError(
            f"A MySQL store URL names one database after the host, {_URL_FORM}: {shown!r}."
        )
    options = query_options(parts.query, _OPTION_TYPES, url=url)
    return MySQLOptions(
        host=parts.hostname,
        user=unquote(parts.username),
        database=database,
        password=unquote(parts.password or ""),
        port=port,
        **options,  # type: ignore[arg-type]
    )


def session_setup(options: MySQLOptions) -> str:
    """Return what each of the store's connections runs once, as it opens (two statements).

    READ COMMITTED: a locking read or write locks the rows it finds and no gap between them
    (only duplicate-key checks still lock gaps), so a purge never blocks the claims of new keys
    that would land among the rows it deletes. `sql_notes = 0`: `CREATE TABLE IF NOT EXISTS`
    of a table that exists is not a warning (aiomysql turns warnings into Python warnings).
    """
    settings = [f"sql_mode = '{_SQL_MODE}'", "sql_notes = 0"]
    if options.lock_timeout is not None:
        settings.append(f"innodb_lock_wait_timeout = {int(options.lock_timeout)}")
    return (
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED;"
        f" SET {', '.join(f'SESSION {setting}' for setting in settings)}"
    )


def _code(error: BaseException) -> int | None:
    code = error.args[0] if error.args else None
    return code if isinstance(code, int) else None


def deadlocked(error: BaseException) -> bool:
    """Return whether `error` is InnoDB's deadlock: the whole transaction was rolled back, so
    running it again from the start is safe."""
    return isinstance(error, pymysql.OperationalError) and _code(error) == DEADLOCK


def connection_lost(error: BaseException) -> bool:
    """Return whether the connection that raised `error` is unusable (closed, broken, or in an
    unknown state), rather than merely refused one statement."""
    if isinstance(error, pymysql.InterfaceError):
        return True
    code = _code(error)
    return code is None or code in _CLIENT_ERRORS or code in {1053, 1927, 4031}


def store_error(error: BaseException) -> StoreError:
    """Map a driver error to retrysafe's: unreachable, busy or locked-out servers are
    unavailable (B20)."""
    if isinstance(error, pymysql.InterfaceError):
        return StoreUnavailableError(f"MySQL is unavailable: the connection is closed ({error}).")
    code = _code(error)
    if isinstance(error, pymysql.OperationalError) and (
        code is None or code in _CLIENT_ERRORS or code in _UNAVAILABLE
    ):
        return StoreUnavailableError(f"MySQL is unavailable: {error}")
    return StoreError(f"MySQL failed: {error}")


def translate_errors() -> contextlib.AbstractContextManager[None]:
    """Re-raise any driver error as a StoreError, so no driver exception leaves the store."""
    return translated(pymysql.MySQLError, store_error)
