"""The MySQL/MariaDB record primitives, each run on the driver connection it is given.

The one implementation of the MySQL record: the store (`mysql.py`) runs it on its pooled
autocommit connections, and transactional mode on the caller's connection inside the caller's
transaction, so the record commits with the business writes. Every statement is `MySQLTable`'s
(`stores/_sql/mysql.py`).

A primitive is a write and a read of the row (MySQL returns no row from a write), read under
the lock the write took unless said otherwise. How they are sent depends on `batched`:

- `batched=False` (transactional mode): one after the other, inside the caller's open
  transaction, which makes them atomic; nothing here begins, commits or rolls back.
- `batched=True` (the store): as one query, `START TRANSACTION; write; read; COMMIT`, on a
  connection in autocommit that allows several statements a query: one round trip, one
  transaction. A primitive of one statement is sent alone, and autocommits. Two need no
  transaction there, and go as one query without one: the claim (the insert, then a read that
  finds the record only if another claimant's token is on it; the insert's affected-rows
  count tells an insert from a takeover, as the store's connections count changed rows, not
  found rows) and the completion (its read, then its update). Before its claim, the store
  tries the insert alone (`INSERT_NEW`): a new key, the common case, is then claimed in one
  short statement, with no read; an existing record is read, and claimed only if it may be
  taken over. The completion of a new key the store claimed itself is the update alone: the
  store kept what the read would return.

Driver errors pass through (each caller maps them to retrysafe's, with `store_error`): after an
error in a batch the transaction may still be open (a lock wait timeout undoes the statement
only), so the caller rolls back before reusing the connection.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import aiomysql  # type: ignore[import-untyped]

from retrysafe._engine import may_take
from retrysafe._errors import FencedError
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._sql.mysql import (
    MySQLTable,
    claim_params,
    counts_changed_rows,
    done_record,
    held_params,
    list_query,
    new_record,
    record_from_row,
    record_of,
    render,
)
from retrysafe.stores.base import FENCED, Listing, StoreStats, encode_part

__all__ = ["AsyncMySQLRecords"]

Params = dict[str, Any]
Lean = tuple[bytes, float, bytes | None]  # the columns `LEAN_READ` returns, as stored

_KEPT_AT_MOST = 10_000
"""New claims whose completion the store can build without a read (the oldest forgotten)."""


class _Result(NamedTuple):
    """What one statement gave: its affected-rows count and its rows."""

    rowcount: int
    rows: tuple[tuple[Any, ...], ...]


def _claimed(identity: Identity, params: Params, row: tuple[Any, ...]) -> Claim:
    """Return the claim whose parameters were `params`, given the row read after it (`known`
    columns and `taken_over`): acquired exactly when the row carries the claim's token."""
    record = record_of(identity, row)
    if record.token == params["token"]:
        return Claim(record, acquired=True, taken_over=bool(row[-1]))
    return Claim(record, acquired=False)


class AsyncMySQLRecords:
    """The primitives on one records table; each takes the connection to run on.

    Args:
        table: the table's statements (`mysql_table(name)`).
        batched: send a primitive's statements as one transaction of their own (the store's
            autocommit connections); otherwise run them one by one in the caller's open
            transaction.
    """

    def __init__(self, table: MySQLTable, *, batched: bool = False) -> None:
        self.table = table
        self._batched = batched
        # The store's claims of new keys, by token: what `LEAN_READ` would return for them.
        self._kept: dict[str, Lean] = {}

    async def exists(self, conn: aiomysql.Connection) -> bool:
        """Return whether the table exists with every column this version uses."""
        (result,) = await self._run(conn, (self.table.table_exists, {"name": self.table.name}))
        return bool(result.rows[0][0])

    async def create_schema(self, conn: aiomysql.Connection) -> None:
        """Create the table and its indexes if missing.

        DDL: MySQL commits the connection's open transaction first, so run it outside one.
        Concurrent creation is safe: the server serializes it, and the later ones find the
        table. The session's `sql_notes` is off meanwhile (and restored), so finding the table
        is not a warning (the async driver raises server warnings as Python warnings).
        """
        (notes,) = await self._run(conn, ("SELECT @@SESSION.sql_notes", {}))
        if notes.rows[0][0]:
            await self._run(conn, ("SET SESSION sql_notes = 0", {}))
        try:
            for statement in self.table.create_schema:
                await self._run(conn, (statement, {}))
        finally:
            if notes.rows[0][0]:
                await self._run(conn, ("SET SESSION sql_notes = 1", {}))

    async def claim(
        self,
        conn: aiomysql.Connection,
        identity: Identity,
        fingerprint: str,
        *,
        now: float,
        lease: float,
        retention: float,
    ) -> Claim:
        """Claim `identity` (insert, or take over as `may_take` allows), or return its record.

        One `INSERT ... ON DUPLICATE KEY UPDATE` on the primary key decides. In the caller's
        transaction the record is then read under the lock it took; the claim acquired the
        record exactly when the record carries the claim's new token. The store's claim (no
        transaction) first inserts alone (`INSERT_NEW`, one round trip for a new key); if a
        record is there, it reads it and answers with it unless the claim may take it (a
        replay: two round trips). Only then does it claim with `CLAIM`, read the record if
        another's token is on it, and learn from the affected rows whether it took over (2,
        then it reads what was kept). A duplicate of a record that another transaction holds
        (inserted or locked, uncommitted) waits for that transaction's end, then sees what it
        left.
        """
        params = claim_params(identity, fingerprint, now=now, lease=lease, retention=retention)
        if self._batched and counts_changed_rows(conn):
            # The store: a new key is claimed by the insert alone (`INSERT_NEW`).
            (inserted,) = await self._run(conn, (self.table.insert_new, params))
            if inserted.rowcount == 1:  # no record had the key: this one is the claim's
                return self._new(identity, fingerprint, params)
            # A record is there: read it (a consistent read, no lock), and answer with it unless
            # the claim may take it; a record to take over, or gone meanwhile, goes on below.
            (found,) = await self._run(conn, (self.table.latest_read, {"id": params["id"]}))
            if found.rows:
                existing = record_of(identity, found.rows[0])
                if not may_take(existing, fingerprint, now):
                    return Claim(existing, acquired=False)
        if self._batched:  # the store: the insert, then a read of a rival's record, no transaction
            rival_of = {"id": params["id"], "token": params["token"]}
            claimed, rival = await self._run(
                conn, (self.table.claim, params), (self.table.rival_read, rival_of), atomic=False
            )
            if rival.rows:  # another's token is on the record: a replay, a mismatch, in flight
                return _claimed(identity, params, rival.rows[0])
            if claimed.rowcount == 1:  # inserted: the record is the one the claim wrote
                return self._new(identity, fingerprint, params)
            if claimed.rowcount == 2:  # taken over: read back what the takeover kept
                (read,) = await self._run(conn, (self.table.latest_read, {"id": params["id"]}))
                if read.rows:  # acquired if its token is still this claim's
                    return _claimed(identity, params, read.rows[0])
            # No record left to read (deleted meanwhile, by `keys delete`): claim it again.
        _, read = await self._run(
            conn, (self.table.claim, params), (self.table.claim_read, {"id": params["id"]})
        )
        return _claimed(identity, params, read.rows[0])  # inserted, or the existing one locked

    async def complete(
        self,
        conn: aiomysql.Connection,
        identity: Identity,
        token: str,
        outcome: bytes,
        *,
        now: float,
        retention: float,
    ) -> Record:
        """Store `outcome` on the held record and mark it done."""
        params = held_params(identity, token, now, outcome=outcome, expires_at=now + retention)
        complete, read = (self.table.complete, params), (self.table.lean_read, {"id": params["id"]})
        kept = self._kept.pop(token, None)
        if kept is not None:  # a new key this store claimed: the update alone
            (done,) = await self._run(conn, complete)
            if done.rowcount != 1:
                raise FencedError(FENCED)
            return done_record(identity, token, outcome, kept, now=now, retention=retention)
        if self._batched:
            # The store: the read, then the update, in one query and no transaction. What the
            # read returns cannot change while the holder holds the record (a claim that takes
            # it over writes a new token, and the update then changes nothing), unless the holder
            # itself checkpoints meanwhile: then the returned recovery point is the one before.
            lean, done = await self._run(conn, read, complete, atomic=False)
        else:
            done, lean = await self._run(conn, complete, read)
        # The update always changes the state, so one row counts whether the connection reports
        # changed or found rows.
        if done.rowcount != 1 or not lean.rows:
            raise FencedError(FENCED)
        return done_record(identity, token, outcome, lean.rows[0], now=now, retention=retention)

    async def release(
        self, conn: aiomysql.Connection, identity: Identity, token: str, *, now: float
    ) -> None:
        """Delete the held in-flight record."""
        self._kept.pop(token, None)
        (gone,) = await self._run(conn, (self.table.release, held_params(identity, token, now)))
        if gone.rowcount != 1:
            raise FencedError(FENCED)

    async def renew(
        self,
        conn: aiomysql.Connection,
        identity: Identity,
        token: str,
        *,
        now: float,
        lease: float,
    ) -> Record:
        """Extend the holder's lease, and the retention deadline by as much; lock the row."""
        params = held_params(identity, token, now, lease_expires_at=now + lease)
        return await self._held(conn, self.table.renew, params)

    async def checkpoint(
        self,
        conn: aiomysql.Connection,
        identity: Identity,
        token: str,
        recovery_point: str,
        *,
        now: float,
    ) -> Record:
        """Record the last committed phase on the held record."""
        params = held_params(identity, token, now, recovery_point=encode_part(recovery_point))
        record = await self._held(conn, self.table.checkpoint, params)
        kept = self._kept.get(token)
        if kept is not None:
            self._kept[token] = (kept[0], kept[1], params["recovery_point"])
        return record

    async def get(
        self, conn: aiomysql.Connection, identity: Identity, *, now: float
    ) -> Record | None:
        """Return the live record, or None."""
        (read,) = await self._run(conn, (self.table.get, {"id": identity.digest(), "now": now}))
        return record_from_row(read.rows[0]) if read.rows else None

    async def delete(self, conn: aiomysql.Connection, identity: Identity) -> bool:
        """Delete the record whatever its state; return whether one existed."""
        (gone,) = await self._run(conn, (self.table.delete, {"id": identity.digest()}))
        return gone.rowcount > 0

    async def purge_expired(self, conn: aiomysql.Connection, *, now: float, limit: int) -> int:
        """Delete at most `limit` records past their retention, oldest first; return how many."""
        if limit <= 0:
            return 0
        (gone,) = await self._run(conn, (self.table.purge, {"now": now, "limit": limit}))
        return int(gone.rowcount)

    async def list_records(
        self, conn: aiomysql.Connection, listing: Listing, *, now: float
    ) -> list[Record]:
        """Return the live records `listing` asks for, newest first."""
        (read,) = await self._run(conn, list_query(self.table, listing, now=now))
        return [record_from_row(row) for row in read.rows]

    async def stats(self, conn: aiomysql.Connection, *, now: float) -> StoreStats:
        """Return counts of live records by state, stored bytes, and the oldest claim."""
        (read,) = await self._run(conn, (self.table.stats, {"now": now}))
        in_flight, done, bytes_stored, oldest = read.rows[0]
        return StoreStats(
            in_flight=int(in_flight),
            done=int(done),
            bytes_stored=int(bytes_stored),
            oldest_in_flight_at=None if oldest is None else float(oldest),
        )

    def _new(self, identity: Identity, fingerprint: str, params: Params) -> Claim:
        """Return the store's claim of a new key, the record it inserted; keep what its
        completion would read back, forgetting the oldest claims past `_KEPT_AT_MOST`."""
        kept = self._kept
        kept[params["token"]] = (params["fingerprint"], params["now"], None)
        if len(kept) > _KEPT_AT_MOST:
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del kept[next(iter(kept))]  # another thread may change it meanwhile
        return Claim(new_record(identity, fingerprint, params), acquired=True)

    async def _held(self, conn: aiomysql.Connection, update: str, params: Params) -> Record:
        """Run an update that acts only for the token holder, then read the record if it is
        still held (not the affected rows: an update to the same values counts none)."""
        _, read = await self._run(conn, (update, params), (self.table.held_read, params))
        if not read.rows:
            raise FencedError(FENCED)
        return record_from_row(read.rows[0])

    async def _run(
        self, conn: aiomysql.Connection, *statements: tuple[str, Params], atomic: bool = True
    ) -> list[_Result]:
        """Run `statements` (see the module docstring for how); return each one's result.
        Batched and not `atomic`, they go as one query without a transaction around them."""
        cursor = await conn.cursor(aiomysql.cursors.Cursor)  # tuples, whatever the connection's
        queries = [render(conn, query, params) for query, params in statements]
        results: list[_Result] = []
        if self._batched and len(queries) > 1:
            sent = ["START TRANSACTION", *queries, "COMMIT"] if atomic else queries
            await cursor.execute(";\n".join(sent))
            for index in range(len(queries)):
                if atomic or index:  # past the previous statement's result
                    await cursor.nextset()
                results.append(_Result(cursor.rowcount, tuple(await cursor.fetchall())))
            if atomic:
                await cursor.nextset()  # the COMMIT's: an error in it is raised here
            return results
        for query in queries:
            await cursor.execute(query)
            results.append(_Result(cursor.rowcount, tuple(await cursor.fetchall())))
        return results
