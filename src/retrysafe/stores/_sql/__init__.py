"""The records tables of the SQL stores, which transactional mode shares, and what they share.

The SQLite, PostgreSQL and MySQL stores keep their records in one table each, and
transactional mode (`retrysafe.transactions`) runs the stores' own statements on that table
inside the caller's transaction, so every mode sees the records the others wrote. Nothing here
imports a driver the caller does not use: each module below imports its own, and this one none.
It holds what every table has alike: the default name and how a name is checked, the record's
columns and how a row becomes a `Record`, the parameters of a claim, of a holder's
statement and of a listing's filters, and how long a renewal waits for its reply.

- `sqlite.py`: the SQLite table, its statements and the primitives on a `sqlite3` connection;
  `sqlite_connection.py` opens connections, runs write transactions and maps errors;
  `sqlite_file.py` is the SQLite store's engine (schema, group commit),
  `sqlite_threads.py` its connections (one per thread, all closed with the store),
  `sqlite_writer.py` the async face's writer thread, and `sqlite_runners.py` how each face
  runs the primitives.
- `postgres.py`: the PostgreSQL table's statements rendered for one table, and its rows;
  `postgres_statements.py` is their text; `postgres_connection.py` reads a store URL and maps
  errors. The primitives that run them on a psycopg connection, for the store and transactional
  mode alike, are `stores/_async/postgres_records.py` (and its generated sync twin).
- `mysql.py`: the MySQL/MariaDB table's statements rendered for one table, and its rows;
  `mysql_statements.py` is their text; `mysql_connection.py` reads a store URL and maps errors;
  `mysql_io.py` is what the store's two faces do differently (the drivers' connections). The
  primitives, for the store and transactional mode alike, are `stores/_async/mysql_records.py`
  (and its generated sync twin).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeVar

from retrysafe._errors import ConfigurationError, StoreError
from retrysafe._record import Identity, Record, State
from retrysafe.stores.base import RECORD_FIELDS, Listing, decode_part, encode_part, new_token

__all__ = [
    "DEFAULT_TABLE",
    "RECORD_COLUMNS",
    "checked_table_name",
    "claim_params",
    "derived_name",
    "done_record",
    "held_params",
    "identity_params",
    "listing_filters",
    "new_record",
    "record_from_columns",
    "record_from_row",
    "record_of",
    "renewal_timeout",
    "translated",
]

E = TypeVar("E", bound=BaseException)

DEFAULT_TABLE: Final = "retrysafe_records"
"""The records table of every SQL store and of transactional mode, unless `table` names another."""

RECORD_COLUMNS: Final = ("namespace", "scope", "key", *RECORD_FIELDS)
"""The columns that hold a record, in every table (after the primary key, `id`)."""

# ASCII letters, digits and underscores, not starting with a digit: a name that needs no
# escaping inside the quotes and means the same on every server (its length is the server's).
_TABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# A listing filter's parameter, and the condition it puts on the table (`{}`: the parameter).
_LISTING_CONDITIONS: Final = {
    "namespace": "namespace = {}",
    "scope": "scope = {}",
    "state": "state = {}",
    "created_before": "created_at < {}",
}


def renewal_timeout(reply_timeout: float, lease: float) -> float:
    """Return the seconds a renewal of `lease` may wait for its reply (B16): `reply_timeout`,
    or a sixth of the lease (half a second at least) if that is shorter.

    A renewal is a one-row UPDATE, sent a third of the way into the lease. On a connection the
    network silently lost (a NAT or firewall state expired, an address moved: no reset ever
    comes) it would wait the whole reply timeout, as long as the default lease or longer, and
    the lease would lapse: another caller takes the key over and runs the effect again. Cut at
    a sixth, it fails by half the lease, that connection is dropped, and the heartbeat renews
    again soon (`retrysafe._heartbeat`), on another connection, before the lease ends.
    """
    return min(reply_timeout, max(lease / 6, 0.5))


def checked_table_name(name: str, *, longest: int) -> str:
    """Return `name` if it is a safe table name of at most `longest` characters; raise
    ConfigurationError if not. The table name is the one identifier spliced into statements."""
    if not _TABLE_NAME.fullmatch(name) or len(name) > longest:
        raise ConfigurationError(
            f"Invalid table name {name!r}: use 1 to {longest} ASCII letters, digits and "
            "underscores, not starting with a digit."
        )
    return name


def derived_name(table: str, suffix: str, *, longest: int = 63) -> str:
    """Return `{table}_{suffix}` (an index's or a channel's name), shortened with a hash of
    `table` when it would pass `longest` characters: PostgreSQL truncates a longer identifier,
    which could give two tables' indexes one name."""
    name = f"{table}_{suffix}"
    if len(name) <= longest:
        return name
    tag = hashlib.sha256(table.encode()).hexdigest()[:8]
    keep = longest - len(suffix) - len(tag) - 2
    return f"{table[:keep]}_{tag}_{suffix}"


def record_from_columns(values: Sequence[Any]) -> Record:
    """Return the record stored in the values of `RECORD_COLUMNS`, in that order.

    Identity parts, the fingerprint and the recovery point are stored as bytes through
    `encode_part`, so any string round-trips (NUL, non-ASCII, lone surrogates).
    """
    namespace, scope, key = values[:3]
    identity = Identity(decode_part(namespace), decode_part(scope), decode_part(key))
    return record_of(identity, values[3:])


def record_of(identity: Identity, values: Sequence[Any]) -> Record:
    """Return `identity`'s record stored in the values of the columns after its parts
    (`RECORD_COLUMNS[3:]`, in that order): for a read that finds the row by the identity's
    digest, so need not read the parts back."""
    fingerprint, state, token, created_at, lease_expires_at, expires_at = values[:6]
    outcome, recovery_point = values[6:8]
    return Record(
        identity=identity,
        fingerprint=decode_part(fingerprint),
        state=State(state),
        token=token,
        created_at=created_at,
        lease_expires_at=lease_expires_at,
        expires_at=expires_at,
        outcome=None if outcome is None else bytes(outcome),
        recovery_point=None if recovery_point is None else decode_part(recovery_point),
    )


def record_from_row(row: Sequence[Any]) -> Record:
    """Build a Record from the first columns of a row, in `RECORD_COLUMNS` order."""
    return record_from_columns(row[: len(RECORD_COLUMNS)])


def identity_params(identity: Identity) -> dict[str, Any]:
    """Return the identity's primary key and stored parts as statement parameters."""
    return {
        "id": identity.digest(),
        "namespace": encode_part(identity.namespace),
        "scope": encode_part(identity.scope),
        "key": encode_part(identity.key),
    }


def claim_params(
    identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
) -> dict[str, Any]:
    """Return the parameters of one claim at `now`, with a fresh fencing token."""
    return {
        **identity_params(identity),
        "fingerprint": encode_part(fingerprint),
        "token": new_token(),
        "now": now,
        "lease_expires_at": now + lease,
        "expires_at": now + lease + retention,
    }


def new_record(identity: Identity, fingerprint: str, params: dict[str, Any]) -> Record:
    """Return the in-flight record that a claim with `params` (`claim_params`) inserts."""
    return Record(
        identity, fingerprint, State.IN_FLIGHT, params["token"], params["now"],
        params["lease_expires_at"], params["expires_at"], None, None,
    )  # fmt: skip


def done_record(
    identity: Identity,
    token: str,
    outcome: bytes,
    lean: Sequence[Any],
    *,
    now: float,
    retention: float,
) -> Record:
    """Return the record a completion at `now` left, from the columns it did not write, read
    back as stored (`lean`: the fingerprint, the creation time, the recovery point); the rest is
    the completing caller's own, so a large outcome is never read back."""
    fingerprint, created_at, point = lean
    return Record(
        identity, decode_part(fingerprint), State.DONE, token, created_at, now, now + retention,
        outcome, None if point is None else decode_part(point),
    )  # fmt: skip


def held_params(identity: Identity, token: str, now: float, **more: Any) -> dict[str, Any]:
    """Return the parameters of a statement that acts only for the token holder (each table's
    `HELD` condition: `id`, `token`, `now`), and the statement's own values, `more`."""
    return {"id": identity.digest(), "token": token, "now": now, **more}


def listing_filters(listing: Listing, paramstyle: str) -> tuple[list[str], dict[str, Any]]:
    """Return the conditions that `listing`'s filters put on the table, and their parameters.

    `paramstyle` writes a parameter the driver's way, `{}` standing for its name: `%({})s`
    (psycopg, PyMySQL) or `:{}` (sqlite3). The rest of the listing (live records only, the
    order, the limit) is each table's own statement.
    """
    values = {
        "namespace": None if listing.namespace is None else encode_part(listing.namespace),
        "scope": None if listing.scope is None else encode_part(listing.scope),
        "state": None if listing.state is None else listing.state.value,
        "created_before": listing.created_before,
    }
    params = {name: value for name, value in values.items() if value is not None}
    conditions = [_LISTING_CONDITIONS[name].format(paramstyle.format(name)) for name in params]
    return conditions, params


@contextlib.contextmanager
def translated(driver_error: type[E], store_error: Callable[[E], StoreError]) -> Iterator[None]:
    """Re-raise any `driver_error` as the StoreError `store_error` maps it to, so no driver
    exception leaves a store."""
    try:
        yield
    except driver_error as error:
        raise store_error(error) from error
