"""The text of every statement on the MySQL/MariaDB records table.

Templates for `MySQLTable.for_table` (`mysql.py`), each named as the field it renders, in
capitals (`CLAIM` is `MySQLTable.claim`; `CREATE_TABLE` is its schema, `HELD` a part of others).
It fills in the quoted table name ({table}), the record columns ({columns}: `RECORD_COLUMNS`;
{known}: those after the identity's parts, for a read by the identity's digest, whose caller
has the parts) and the holder's condition ({held}); every value is
a named parameter, escaped by the driver (B34). The text runs unchanged on MySQL 8 and on
MariaDB 10.6 and later: no `RETURNING` (MySQL has none for any statement, MariaDB none for
`UPDATE`), no `VALUES()` in `ON DUPLICATE KEY UPDATE` (deprecated by MySQL 8, which warns) and
no user variables in expressions (MySQL 8 warns). No statement contains a literal `%`, so the
driver's `%(name)s` formatting is safe. Nothing here does I/O.
"""

from __future__ import annotations

__all__ = [
    "CHECKPOINT",
    "CLAIM",
    "CLAIM_READ",
    "COMPLETE",
    "CREATE_TABLE",
    "DELETE",
    "GET",
    "HELD",
    "HELD_READ",
    "INSERT_NEW",
    "LATEST_READ",
    "LEAN_READ",
    "PURGE",
    "RELEASE",
    "RENEW",
    "RIVAL_READ",
    "STATS",
    "TABLE_EXISTS",
]

# The condition under which a token holder may act: its own claim, still in flight, not past
# retention. The lease is not checked: a holder whose lease expired but was not taken over may
# still finish (as in every other store).
HELD = "id = %(id)s AND token = %(token)s AND state = 'in_flight' AND expires_at > %(now)s"

# The primary key is the identity's SHA-256 in hex, so a key of any length fits InnoDB's index
# limit (3072 bytes) and the identity parts need no index: they are MEDIUMBLOBs (16 MiB), any
# string round-trips through `encode_part` whatever the connection's character set. Outcomes
# are LONGBLOB: their size is bounded by the server's `max_allowed_packet`, not by the column.
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    id               CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    namespace        MEDIUMBLOB NOT NULL,
    scope            MEDIUMBLOB NOT NULL,
    `key`            MEDIUMBLOB NOT NULL,
    fingerprint      MEDIUMBLOB NOT NULL,
    state            ENUM('in_flight', 'done') NOT NULL,
    token            VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at       DOUBLE NOT NULL,
    lease_expires_at DOUBLE NOT NULL,
    expires_at       DOUBLE NOT NULL,
    outcome          LONGBLOB NULL,
    recovery_point   MEDIUMBLOB NULL,
    taken_over       BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (id),
    KEY expires_at (expires_at),
    KEY created_at (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin
"""

# Whether the table exists with every column this version uses (the last one added).
TABLE_EXISTS = """
SELECT COUNT(*) FROM information_schema.columns
WHERE table_schema = DATABASE() AND table_name = %(name)s AND column_name = 'taken_over'
"""

# Whether a claim may take the existing row: past retention, or an expired lease of the same
# request (exactly `_engine.may_take`).
_MAY_TAKE = """(expires_at <= %(now)s
        OR (state = 'in_flight'
            AND lease_expires_at <= %(now)s
            AND fingerprint = %(fingerprint)s))"""

# A fresh record, as the claim writes it. Templates, here and below: {table} is a validated
# name, and every value a parameter.
_INSERT = """
INSERT INTO {table} (
    id, namespace, scope, `key`, fingerprint, state, token,
    created_at, lease_expires_at, expires_at, outcome, recovery_point, taken_over
) VALUES (
    %(id)s, %(namespace)s, %(scope)s, %(key)s, %(fingerprint)s, 'in_flight', %(token)s,
    %(now)s, %(lease_expires_at)s, %(expires_at)s, NULL, NULL, FALSE
)"""

# Whether this claim took the row, once its token is written or not.
_TOOK = f"(token = %(token)s OR {_MAY_TAKE})"

# The claim: one statement on the primary key. It inserts the record, or takes the existing one
# over (as `_MAY_TAKE` allows), or changes nothing; InnoDB puts an exclusive lock on the
# conflicting row either way, held to the end of the transaction, so the record cannot change
# under the claim that found it (`CLAIM_READ` reads it under that lock).
#
# MySQL and MariaDB evaluate `ON DUPLICATE KEY UPDATE` assignments left to right, each seeing
# the columns as the earlier ones left them (unless MariaDB's SIMULTANEOUS_ASSIGNMENT mode is
# on: then each sees the old row). The statement is right under both. The first assignment
# writes the claim's new token exactly when the claim may take the row; every later one tests
# `_TOOK`: the token is the claim's (left to right, after a take), or the old row may be taken
# (simultaneous; or left to right when nothing was taken, so nothing changed yet). Columns read
# as the old row's (`expires_at`: whether the record was live, for `taken_over`, the creation
# time and the recovery point) are assigned after every expression that reads them. A takeover
# of a live record keeps its creation time and recovery point (B30). A claim that takes nothing
# assigns every column its own value: InnoDB writes nothing, and the affected-rows count is 0.
CLAIM = f"""
{_INSERT}
ON DUPLICATE KEY UPDATE
    token = IF({_MAY_TAKE}, %(token)s, token),
    taken_over = IF({_TOOK}, expires_at > %(now)s, taken_over),
    created_at = IF({_TOOK} AND expires_at <= %(now)s, %(now)s, created_at),
    recovery_point = IF({_TOOK} AND expires_at <= %(now)s, NULL, recovery_point),
    fingerprint = IF({_TOOK}, %(fingerprint)s, fingerprint),
    state = IF({_TOOK}, 'in_flight', state),
    outcome = IF({_TOOK}, NULL, outcome),
    lease_expires_at = IF({_TOOK}, %(lease_expires_at)s, lease_expires_at),
    expires_at = IF({_TOOK}, %(expires_at)s, expires_at)
"""

# The store's first try at a claim (not transactional mode's): the insert alone, with an update
# that changes nothing. One affected row: it inserted, as no record had the key. None: a record
# is there, left unchanged; the claim reads it (`LATEST_READ`) and answers with it, or goes on
# with `CLAIM` if it may take it over. Only on connections that count changed rows, not found
# rows (with CLIENT_FOUND_ROWS the row found would count 1 too). A quarter of `CLAIM`'s text,
# and no read after it: a new key is the common case, and what the server parses and the reads
# it answers were most of a claim's time.
INSERT_NEW = f"""
{_INSERT}
ON DUPLICATE KEY UPDATE id = id
"""

# The record after a claim, in the claim's transaction: a locking read, so it sees the row as
# the claim left it (inserted, taken over, or locked unchanged) whatever the isolation level.
# The claim holds the row's lock already, so the read waits for nothing. Not the identity's
# parts: the claimant has them (the drivers parse every column's description in Python, about
# 5 µs a column a result).
CLAIM_READ = "SELECT {known}, taken_over FROM {table} WHERE id = %(id)s FOR UPDATE"

# The store's claims run without a transaction (see `mysql_records.py`): the claim, then in the
# same query this read, which returns the row only if another claimant's token is on it (a
# replay, a mismatch, a duplicate in flight), so a claim that inserted or took over reads no
# row. Both reads here are consistent reads, which wait for no lock and so cannot deadlock: any
# transaction that held the row when the claim ran has ended, since the claim waited for it.
RIVAL_READ = "SELECT {known}, taken_over FROM {table} WHERE id = %(id)s AND token <> %(token)s"

# The row as last committed: after a takeover, what it kept (creation time, recovery point).
LATEST_READ = "SELECT {known}, taken_over FROM {table} WHERE id = %(id)s"

COMPLETE = """
UPDATE {table}
SET state = 'done', outcome = %(outcome)s,
    lease_expires_at = %(now)s, expires_at = %(expires_at)s
WHERE {held}
"""

# The record after a completion: only what the caller does not know (it wrote the state, the
# token, the times and the outcome; echoing a large outcome back costs about as much as sending
# it). In transactional mode it follows the update, under the update's lock; the store sends it
# just before the update, in the same query (see `mysql_records.py`), unless the store claimed
# the key itself as a new one: then it knows the three columns, and sends the update alone.
LEAN_READ = "SELECT fingerprint, created_at, recovery_point FROM {table} WHERE id = %(id)s"

RELEASE = "DELETE FROM {table} WHERE {held}"

# `expires_at` is assigned first, so it reads the old lease under either assignment order.
RENEW = """
UPDATE {table}
SET expires_at = expires_at + GREATEST(0e0, %(lease_expires_at)s - lease_expires_at),
    lease_expires_at = %(lease_expires_at)s
WHERE {held}
"""

CHECKPOINT = "UPDATE {table} SET recovery_point = %(recovery_point)s WHERE {held}"

# The record after a renewal or a checkpoint, if the caller still holds it. Not the UPDATE's
# affected-rows count: an UPDATE that writes the values already there counts 0 rows (unless
# the connection has CLIENT_FOUND_ROWS), and a renewal at the same instant does just that.
HELD_READ = "SELECT {columns} FROM {table} WHERE {held} FOR UPDATE"

GET = "SELECT {columns} FROM {table} WHERE id = %(id)s AND expires_at > %(now)s"

DELETE = "DELETE FROM {table} WHERE id = %(id)s"

# Bounded batches, oldest first along the expires_at index; the order makes the statement
# deterministic, so it is safe for statement-based replication.
PURGE = "DELETE FROM {table} WHERE expires_at <= %(now)s ORDER BY expires_at, id LIMIT %(limit)s"

STATS = """
SELECT
    COALESCE(SUM(state = 'in_flight'), 0),
    COALESCE(SUM(state = 'done'), 0),
    COALESCE(SUM(LENGTH(outcome)), 0),
    MIN(IF(state = 'in_flight', created_at, NULL))
FROM {table}
WHERE expires_at > %(now)s
"""
