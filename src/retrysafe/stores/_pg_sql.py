"""The PostgreSQL records table: its statements, row conversion, URL parsing and error mapping.

Shared by both faces of the PostgreSQL store (`stores/_async/postgres.py` and its generated sync
twin) and by the transactional mode, which runs the same statements inside the user's own
transaction. Nothing here does I/O.

Identity parts, the fingerprint and the recovery point are stored as BYTEA through
`encode_part` (PostgreSQL text cannot hold NUL), so any string round-trips; the primary key is
`Identity.digest()`. Times are double precision seconds from the store's clock, passed in as
parameters and never read from the database's `now()`, so an injected clock rules everywhere.
The table name is the one identifier spliced into the statements: it is validated, then quoted
with `psycopg.sql.Identifier`; every value is a bound parameter (B34).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from retrysafe._errors import ConfigurationError, StoreError, StoreUnavailableError
from retrysafe._record import Identity, Record, State
from retrysafe.stores.base import decode_part, encode_part, query_options

__all__ = [
    "DEFAULT_TABLE",
    "PostgresOptions",
    "RecordTable",
    "identity_params",
    "list_query",
    "parse_url",
    "record_from_row",
    "store_error",
    "translate_errors",
    "validate_table",
]

DEFAULT_TABLE: Final = "retrysafe_records"

# PostgreSQL identifiers are at most 63 bytes; longer ones are silently truncated, which could
# merge two tables' indexes or channels, so the table name is refused instead.
_TABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_MAX_IDENTIFIER: Final = 63

_COLUMNS: Final = (
    "namespace",
    "scope",
    "key",
    "fingerprint",
    "state",
    "token",
    "created_at",
    "lease_expires_at",
    "expires_at",
    "outcome",
    "recovery_point",
)

# SQLSTATE classes that mean "the server is not there for us right now": connection exceptions,
# insufficient resources (too many connections), operator intervention (shutdown, cancel).
_UNAVAILABLE_CLASSES: Final = frozenset({"08", "53", "57"})


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """What a `postgresql://` URL configures besides the connection itself.

    Attributes:
        table: the records table.
        connect_timeout: seconds to wait for a new connection.
        pool_min: connections kept open.
        pool_max: the most connections the pool opens.
        pool_timeout: seconds to wait for a pooled connection before the store is unavailable.
    """

    table: str = DEFAULT_TABLE
    connect_timeout: float = 5.0
    pool_min: int = 1
    pool_max: int = 10
    pool_timeout: float = 10.0

    def __post_init__(self) -> None:
        """Refuse values the pool or the server would fail on later, less clearly."""
        validate_table(self.table)
        if self.connect_timeout <= 0 or self.pool_timeout <= 0:
            raise ConfigurationError("connect_timeout and pool_timeout must be positive seconds.")
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
}


def parse_url(url: str) -> tuple[str, PostgresOptions]:
    """Split a store URL into the libpq conninfo and the store's own options.

    The store's options (`table`, `connect_timeout`, `pool_min`, `pool_max`, `pool_timeout`)
    are removed; any other query parameter is a libpq one (`sslmode`, `application_name`) and
    stays in the conninfo, where libpq validates it now rather than at the first connection.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"A PostgreSQL store URL starts with postgresql://, not {url!r}.")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    ours = [(name, value) for name, value in pairs if name in _OPTION_TYPES]
    theirs = [(name, value) for name, value in pairs if name not in _OPTION_TYPES]
    options = query_options(urlencode(ours), _OPTION_TYPES)
    conninfo = urlunsplit(parts._replace(query=urlencode(theirs)))
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as error:
        raise ConfigurationError(f"Invalid PostgreSQL store URL: {error}") from None
    return conninfo, PostgresOptions(**options)  # type: ignore[arg-type]


def validate_table(name: str) -> str:
    """Return `name` if it is a safe, untruncated table name; raise ConfigurationError if not."""
    if not _TABLE_NAME.fullmatch(name):
        raise ConfigurationError(
            f"Invalid table name {name!r}: use 1 to 63 ASCII letters, digits and underscores, "
            "not starting with a digit."
        )
    return name


def _derived_name(table: str, suffix: str) -> str:
    """Return `{table}_{suffix}`, shortened with a hash when it would pass 63 bytes."""
    name = f"{table}_{suffix}"
    if len(name) <= _MAX_IDENTIFIER:
        return name
    tag = hashlib.sha256(table.encode()).hexdigest()[:8]
    keep = _MAX_IDENTIFIER - len(suffix) - len(tag) - 2
    return f"{table[:keep]}_{tag}_{suffix}"


@dataclass(frozen=True, slots=True)
class RecordTable:
    """Every statement on one records table, rendered once with the table name quoted.

    Statements take named parameters; `record_from_row` reads the record columns they return,
    in `_COLUMNS` order.

    Attributes:
        name: the table name.
        channel: the LISTEN/NOTIFY channel on which completions, releases and deletes of a
            watched record announce its id.
        schema_lock: the advisory lock key that serializes schema creation on this table.
    """

    name: str
    channel: str
    schema_lock: int
    table_exists: sql.Composed
    lock_schema: sql.Composed
    create_schema: tuple[sql.Composed, ...]
    claim: sql.Composed
    claim_or_get: sql.Composed
    get: sql.Composed
    watch: sql.Composed
    complete: sql.Composed
    complete_lean: sql.Composed
    release: sql.Composed
    renew: sql.Composed
    checkpoint: sql.Composed
    delete: sql.Composed
    purge: sql.Composed
    stats: sql.Composed
    listen: sql.Composed
    unlisten: sql.Composed
    columns: sql.Composed

    @classmethod
    def for_table(cls, name: str) -> RecordTable:
        """Compose the statements for table `name` (validated first)."""
        validate_table(name)
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS)
        # The record without its outcome, for a caller that has the outcome already: echoing a
        # large outcome back costs about as much as sending it.
        lean = sql.SQL(", ").join(
            sql.SQL("NULL::bytea") if c == "outcome" else sql.Identifier(c) for c in _COLUMNS
        )
        fields = {"table": sql.Identifier(name), "columns": columns, "held": sql.SQL(_HELD)}

        def compose(text: str, **extra: sql.Composable) -> sql.Composed:
            # Rendered to text once, here: psycopg renders a Composed of many parts again at
            # every execution (15 to 30 us of CPU a statement). The only identifiers are
            # validated ASCII names, so their quoting needs no connection.
            rendered = sql.SQL(text).format(**fields, **extra).as_string()
            return sql.Composed([sql.SQL(rendered)])

        channel = _derived_name(name, "settled")
        digest = hashlib.sha256(f"retrysafe-schema:{name}".encode()).digest()
        return cls(
            name=name,
            channel=channel,
            schema_lock=int.from_bytes(digest[:8], "big", signed=True),
            table_exists=compose(_TABLE_EXISTS),
            lock_schema=compose("SELECT pg_advisory_xact_lock(%(lock)s)"),
            create_schema=(
                compose(_CREATE_TABLE),
                compose(_ADD_WATCHED, regclass=sql.Literal(f'"{name}"')),
                compose(
                    "CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at)",
                    index=sql.Identifier(_derived_name(name, "expires_at")),
                ),
                compose(
                    "CREATE INDEX IF NOT EXISTS {index} ON {table} (created_at)",
                    index=sql.Identifier(_derived_name(name, "created_at")),
                ),
            ),
            claim=compose(_CLAIM),
            claim_or_get=compose(_CLAIM_OR_GET, claim=sql.SQL(_CLAIM).format(**fields)),
            get=compose("SELECT {columns} FROM {table} WHERE id = %(id)s AND expires_at > %(now)s"),
            watch=compose(_WATCH),
            complete=compose(_COMPLETE, selected=columns),
            complete_lean=compose(_COMPLETE, selected=lean),
            release=compose(_RELEASE),
            renew=compose(_RENEW),
            checkpoint=compose(_CHECKPOINT),
            delete=compose(_DELETE),
            purge=compose(_PURGE),
            stats=compose(_STATS),
            listen=compose("LISTEN {channel}", channel=sql.Identifier(channel)),
            unlisten=compose("UNLISTEN {channel}", channel=sql.Identifier(channel)),
            columns=columns,
        )

    def quoted_name(self) -> str:
        """Return the table name quoted for `to_regclass` (safe: the name was validated)."""
        return f'"{self.name}"'


# The condition under which a token holder may act: its own claim, still in flight, not past
# retention. The lease is not checked: a holder whose lease expired but was not taken over may
# still finish (the memory store behaves the same).
_HELD = "id = %(id)s AND token = %(token)s AND state = 'in_flight' AND expires_at > %(now)s"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    id               TEXT PRIMARY KEY,
    namespace        BYTEA NOT NULL,
    scope            BYTEA NOT NULL,
    key              BYTEA NOT NULL,
    fingerprint      BYTEA NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    token            TEXT NOT NULL,
    created_at       DOUBLE PRECISION NOT NULL,
    lease_expires_at DOUBLE PRECISION NOT NULL,
    expires_at       DOUBLE PRECISION NOT NULL,
    outcome          BYTEA,
    recovery_point   BYTEA,
    taken_over       BOOLEAN NOT NULL DEFAULT FALSE,
    watched          BOOLEAN NOT NULL DEFAULT FALSE
)
"""

# Whether the table exists with every column this version uses: if not, the schema statements
# run (under the advisory lock), and they add what is missing.
_TABLE_EXISTS = """
SELECT EXISTS (
    SELECT FROM pg_attribute
    WHERE attrelid = to_regclass(%(quoted)s) AND attname = 'watched' AND NOT attisdropped
)
"""

# Tables created before `watched` existed get it here. ALTER TABLE locks the whole table even
# when the column exists, so it runs only when the column is missing.
_ADD_WATCHED = """
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_attribute
        WHERE attrelid = {regclass}::regclass AND attname = 'watched' AND NOT attisdropped
    ) THEN
        ALTER TABLE {table} ADD COLUMN watched BOOLEAN NOT NULL DEFAULT FALSE;
    END IF;
END
$$
"""

# One statement: insert, or take over a record past its retention or an expired lease of the
# same request (exactly `_engine.may_take`), or do nothing. A takeover of a live record keeps
# its creation time and recovery point (B30); `taken_over` records which case happened, since
# RETURNING sees only the new row.
_CLAIM = """
INSERT INTO {table} AS r (
    id, namespace, scope, key, fingerprint, state, token,
    created_at, lease_expires_at, expires_at, outcome, recovery_point, taken_over
) VALUES (
    %(id)s, %(namespace)s, %(scope)s, %(key)s, %(fingerprint)s, 'in_flight', %(token)s,
    %(now)s, %(lease_expires_at)s, %(expires_at)s, NULL, NULL, FALSE
)
ON CONFLICT (id) DO UPDATE SET
    fingerprint = EXCLUDED.fingerprint,
    state = 'in_flight',
    token = EXCLUDED.token,
    created_at = CASE WHEN r.expires_at > %(now)s THEN r.created_at ELSE EXCLUDED.created_at END,
    lease_expires_at = EXCLUDED.lease_expires_at,
    expires_at = EXCLUDED.expires_at,
    outcome = NULL,
    recovery_point = CASE WHEN r.expires_at > %(now)s THEN r.recovery_point END,
    taken_over = r.expires_at > %(now)s
WHERE r.expires_at <= %(now)s
   OR (r.state = 'in_flight'
       AND r.lease_expires_at <= %(now)s
       AND r.fingerprint = EXCLUDED.fingerprint)
RETURNING {columns}, taken_over
"""

# The store's claim in one round trip: the claim above, and when it changes nothing, the record
# that stopped it, as the statement's snapshot shows it (the last two columns: taken_over,
# acquired). A row that conflicted but is not in the snapshot (committed meanwhile) comes back
# as no row at all, and the store runs the statement again. The transactional mode keeps the
# two statements, as it reads the record under the lock its claim took.
_CLAIM_OR_GET = """
WITH claimed AS ({claim})
SELECT {columns}, taken_over, TRUE FROM claimed
UNION ALL
SELECT {columns}, FALSE, FALSE FROM {table}
WHERE id = %(id)s AND NOT EXISTS (SELECT FROM claimed)
"""

# A waiter's read: it marks the record `watched` and returns it, with whether it is watched.
# Completion, release and delete notify only for a watched record, in the same statement, so
# the notification goes out exactly when the change commits, and a record nobody waits on costs
# no NOTIFY: PostgreSQL commits notifying transactions one at a time (each holds a
# database-wide lock across its commit, WAL flush included), so notifying every completion
# would serialize them.
#
# No wake-up is lost. The waiter LISTENs first (committed), then runs this statement, and row
# locks order it against the completion. If it locks the row first, the completion, which must
# lock the row after it, finds `watched` set and notifies after the LISTEN. If the completion
# commits first, the row lock is taken on its result, which this statement returns. If the
# row is locked at that moment (SKIP LOCKED: a waiter never blocks behind a transaction that
# holds the row), the snapshot's version is returned with `watched` as it stood, possibly
# false, and the waiter then polls until a read marks the record. `watched` is never reset
# while the row exists (a claim leaves it alone), so a true value read from the snapshot was
# committed before it and binds every later completion.
_WATCH = """
WITH marked AS (
    UPDATE {table} SET watched = TRUE
    WHERE id = (
        SELECT id FROM {table}
        WHERE id = %(id)s AND expires_at > %(now)s AND NOT watched
        FOR NO KEY UPDATE SKIP LOCKED
    )
    RETURNING {columns}
)
SELECT {columns}, TRUE FROM marked
UNION ALL
SELECT {columns}, watched FROM {table}
WHERE id = %(id)s AND expires_at > %(now)s AND NOT EXISTS (SELECT FROM marked)
"""

_COMPLETE = """
WITH done AS (
    UPDATE {table}
    SET state = 'done', outcome = %(outcome)s,
        lease_expires_at = %(now)s, expires_at = %(expires_at)s
    WHERE {held}
    RETURNING id, watched, {columns}
)
SELECT {selected}, CASE WHEN watched THEN pg_notify(%(channel)s, id) END FROM done
"""

_RELEASE = """
WITH gone AS (DELETE FROM {table} WHERE {held} RETURNING id, watched)
SELECT CASE WHEN watched THEN pg_notify(%(channel)s, id) END FROM gone
"""

_RENEW = """
UPDATE {table}
SET lease_expires_at = %(lease_expires_at)s,
    expires_at = expires_at
        + GREATEST(0.0::double precision, %(lease_expires_at)s - lease_expires_at)
WHERE {held}
RETURNING {columns}
"""

_CHECKPOINT = """
UPDATE {table} SET recovery_point = %(recovery_point)s WHERE {held} RETURNING {columns}
"""

_DELETE = """
WITH gone AS (DELETE FROM {table} WHERE id = %(id)s RETURNING id, watched)
SELECT CASE WHEN watched THEN pg_notify(%(channel)s, id) END FROM gone
"""

# Bounded batches; SKIP LOCKED lets concurrent purgers (and claims) work on disjoint rows.
_PURGE = """
WITH gone AS (
    DELETE FROM {table}
    WHERE id IN (
        SELECT id FROM {table} WHERE expires_at <= %(now)s
        LIMIT %(limit)s FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT count(*) FROM gone
"""

_STATS = """
SELECT
    count(*) FILTER (WHERE state = 'in_flight'),
    count(*) FILTER (WHERE state = 'done'),
    COALESCE(sum(octet_length(outcome)), 0),
    min(created_at) FILTER (WHERE state = 'in_flight')
FROM {table}
WHERE expires_at > %(now)s
"""


def list_query(
    table: RecordTable,
    *,
    now: float,
    namespace: str | None,
    scope: str | None,
    state: State | None,
    created_before: float | None,
    limit: int,
) -> tuple[sql.Composed, dict[str, Any]]:
    """Return the listing statement and its parameters: live records, newest first."""
    conditions = [sql.SQL("expires_at > %(now)s")]
    params: dict[str, Any] = {"now": now, "limit": max(0, limit)}
    if namespace is not None:
        conditions.append(sql.SQL("namespace = %(namespace)s"))
        params["namespace"] = encode_part(namespace)
    if scope is not None:
        conditions.append(sql.SQL("scope = %(scope)s"))
        params["scope"] = encode_part(scope)
    if state is not None:
        conditions.append(sql.SQL("state = %(state)s"))
        params["state"] = state.value
    if created_before is not None:
        conditions.append(sql.SQL("created_at < %(created_before)s"))
        params["created_before"] = created_before
    query = sql.SQL(
        "SELECT {columns} FROM {table} WHERE {where} ORDER BY created_at DESC, id LIMIT %(limit)s"
    ).format(
        columns=table.columns,
        table=sql.Identifier(table.name),
        where=sql.SQL(" AND ").join(conditions),
    )
    return query, params


def record_from_row(row: Sequence[Any]) -> Record:
    """Build a Record from the first columns of a row, in `_COLUMNS` order."""
    (
        namespace,
        scope,
        key,
        fingerprint,
        state,
        token,
        created_at,
        lease_expires_at,
        expires_at,
        outcome,
        recovery_point,
    ) = row[: len(_COLUMNS)]
    return Record(
        identity=Identity(decode_part(namespace), decode_part(scope), decode_part(key)),
        fingerprint=decode_part(fingerprint),
        state=State(state),
        token=token,
        created_at=created_at,
        lease_expires_at=lease_expires_at,
        expires_at=expires_at,
        outcome=None if outcome is None else bytes(outcome),
        recovery_point=None if recovery_point is None else decode_part(recovery_point),
    )


def identity_params(identity: Identity) -> dict[str, Any]:
    """Return the identity's primary key and stored parts as statement parameters."""
    return {
        "id": identity.digest(),
        "namespace": encode_part(identity.namespace),
        "scope": encode_part(identity.scope),
        "key": encode_part(identity.key),
    }


def store_error(error: psycopg.Error) -> StoreError:
    """Map a psycopg error to retrysafe's: unreachable or overloaded servers are unavailable."""
    sqlstate = error.sqlstate
    unreachable = isinstance(error, psycopg.OperationalError) and (
        sqlstate is None or sqlstate[:2] in _UNAVAILABLE_CLASSES
    )
    if unreachable:
        return StoreUnavailableError(f"PostgreSQL is unavailable: {error}")
    return StoreError(f"PostgreSQL failed: {error}")


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise any psycopg error as a StoreError, so no driver exception leaves the store."""
    try:
        yield
    except psycopg.Error as error:
        raise store_error(error) from error
