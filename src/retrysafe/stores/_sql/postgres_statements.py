"""The text of every statement on the PostgreSQL records table.

Templates for `RecordTable.for_table` (`postgres.py`), which fills in the quoted table name
({table}), the record columns ({columns}: `RECORD_COLUMNS`), the holder's condition ({held})
and the parts of a claim ({claim_into}, {claim_row}, {take_over}); every value is a named
parameter. Nothing here does I/O.
"""

from __future__ import annotations

__all__ = [
    "ADD_WATCHED",
    "CHECKPOINT",
    "CLAIM",
    "CLAIM_INTO",
    "CLAIM_OR_GET",
    "CLAIM_ROW",
    "COMPLETE",
    "CREATE_TABLE",
    "DELETE",
    "GET",
    "HELD",
    "PURGE",
    "RELEASE",
    "RENEW",
    "STATS",
    "TABLE_EXISTS",
    "TAKE_OVER",
    "WATCH",
]

# The condition under which a token holder may act: its own claim, still in flight, not past
# retention. The lease is not checked: a holder whose lease expired but was not taken over may
# still finish (the memory store behaves the same).
HELD = "id = %(id)s AND token = %(token)s AND state = 'in_flight' AND expires_at > %(now)s"

GET = "SELECT {columns} FROM {table} WHERE id = %(id)s AND expires_at > %(now)s"

CREATE_TABLE = """
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
TABLE_EXISTS = """
SELECT EXISTS (
    SELECT FROM pg_attribute
    WHERE attrelid = to_regclass(%(quoted)s) AND attname = 'watched' AND NOT attisdropped
)
"""

# Tables created before `watched` existed get it here. ALTER TABLE locks the whole table even
# when the column exists, so it runs only when the column is missing.
ADD_WATCHED = """
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

# The parts of a claim, which `RecordTable` renders into CLAIM and CLAIM_OR_GET as {claim_into},
# {claim_row} and {take_over}. A claim writes these columns, in this order:
CLAIM_INTO = """INSERT INTO {table} AS r (
    id, namespace, scope, key, fingerprint, state, token,
    created_at, lease_expires_at, expires_at, outcome, recovery_point, taken_over
)"""

# The new record. The NULLs are cast because `INSERT ... SELECT` (CLAIM_OR_GET) would read an
# untyped NULL as text, which a BYTEA column does not take.
CLAIM_ROW = """
    %(id)s, %(namespace)s, %(scope)s, %(key)s, %(fingerprint)s, 'in_flight', %(token)s,
    %(now)s, %(lease_expires_at)s, %(expires_at)s, NULL::bytea, NULL::bytea, FALSE"""

# Take over a record past its retention or an expired lease of the same request (exactly
# `_engine.may_take`), or do nothing; PostgreSQL locks the conflicting row either way. A
# takeover of a live record keeps its creation time and recovery point (B30); `taken_over`
# records which case happened, since RETURNING sees only the new row.
TAKE_OVER = """
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

# One statement: insert, or take over, or lock the record and change nothing. Transactional
# mode claims with it inside the caller's transaction, then reads the record under that lock.
CLAIM = "\n{claim_into} VALUES ({claim_row}\n){take_over}"

# The store's claim, in one round trip. `found` is the record as the statement's snapshot shows
# it, and `kept` says that the claim may not take it (TAKE_OVER's condition, negated). Then the
# statement inserts nothing, so it takes no row lock: a replay, a mismatch or a duplicate of a
# request in flight is a read, with no transaction id, no WAL record and no commit to flush to
# disk, where the lock that `ON CONFLICT` takes even when it changes nothing costs all three.
# It answers as of its snapshot, taken as it started, a moment when the record was live and
# could not be taken. Otherwise it claims as CLAIM does; the last two columns are taken_over
# and acquired. When the claim changes nothing, the row that stopped it is returned as the
# snapshot shows it, and a row that conflicted but is not in the snapshot (committed
# meanwhile) comes back as no row at all: the claim runs again.
CLAIM_OR_GET = """
WITH found AS (
    SELECT {columns},
           expires_at > %(now)s
           AND NOT (state = 'in_flight'
                    AND lease_expires_at <= %(now)s
                    AND fingerprint = %(fingerprint)s) AS kept
    FROM {table} WHERE id = %(id)s
),
claimed AS (
{claim_into}
SELECT{claim_row}
WHERE NOT EXISTS (SELECT FROM found WHERE kept){take_over})
SELECT {columns}, taken_over, TRUE FROM claimed
UNION ALL
SELECT {columns}, FALSE, FALSE FROM found WHERE NOT EXISTS (SELECT FROM claimed)
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
WATCH = """
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

COMPLETE = """
WITH done AS (
    UPDATE {table}
    SET state = 'done', outcome = %(outcome)s,
        lease_expires_at = %(now)s, expires_at = %(expires_at)s
    WHERE {held}
    RETURNING id, watched, {columns}
)
SELECT {selected}, CASE WHEN watched THEN pg_notify(%(channel)s, id) END FROM done
"""

RELEASE = """
WITH gone AS (DELETE FROM {table} WHERE {held} RETURNING id, watched)
SELECT CASE WHEN watched THEN pg_notify(%(channel)s, id) END FROM gone
"""

RENEW = """
UPDATE {table}
SET lease_expires_at = %(lease_expires_at)s,
    expires_at = expires_at
        + GREATEST(0.0::double precision, %(lease_expires_at)s - lease_expires_at)
WHERE {held}
RETURNING {columns}
"""

CHECKPOINT = """
UPDATE {table} SET recovery_point = %(recovery_point)s WHERE {held} RETURNING {columns}
"""

# A delete is also announced on the table's delete channel, whatever the record's state, for
# the replay caches of every process (`stores/_deletes.py`); deletes are rare, so the notifying
# commit's database-wide lock (see WATCH) costs nothing that matters.
DELETE = """
WITH gone AS (DELETE FROM {table} WHERE id = %(id)s RETURNING id, watched)
SELECT CASE WHEN watched THEN pg_notify(%(channel)s, id) END, pg_notify(%(deleted)s, id)
FROM gone
"""

# Bounded batches; SKIP LOCKED lets concurrent purgers (and claims) work on disjoint rows.
PURGE = """
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

STATS = """
SELECT
    count(*) FILTER (WHERE state = 'in_flight'),
    count(*) FILTER (WHERE state = 'done'),
    COALESCE(sum(octet_length(outcome)), 0),
    min(created_at) FILTER (WHERE state = 'in_flight')
FROM {table}
WHERE expires_at > %(now)s
"""
