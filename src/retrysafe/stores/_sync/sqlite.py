# Generated from stores/_async/sqlite.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The SQLite store (`sqlite:///path/to.db`): the embedded default, durable, zero set-up.

Standard-library `sqlite3` in WAL mode. Every primitive is one transaction in the database
file, so the guarantee holds across threads and across processes on one machine. Each face runs
its primitives through a runner (`stores/_sql/sqlite_runners.py`): the async face hands claims
and writes to one writer thread per store, which commits them in groups, and reads in worker
threads; the sync face (generated) calls everything inline, on a connection per thread. The blocking
half (connections, group commit) is `stores/_sql/sqlite_file.py`, the writer thread
`stores/_sql/sqlite_writer.py`; the statements are `stores/_sql/sqlite.py`.
"""

from __future__ import annotations

import os
from typing import Unpack, cast, get_args
from urllib.parse import unquote, urlsplit

from retrysafe._clock import Clock, SystemClock
from retrysafe._errors import ConfigurationError
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._sync._common import poll_until_settled
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.stores._sql.sqlite_connection import Synchronous
from retrysafe.stores._sql.sqlite_file import SQLiteFile
from retrysafe.stores._sql.sqlite_runners import SQLiteRunner
from retrysafe.stores.base import Listing, ListingOptions, StoreStats, query_options

__all__ = ["SQLiteStore"]

_URL_FORMS = "'sqlite:///relative/path.db' or 'sqlite:////absolute/path.db'"
_OPTIONS: dict[str, type] = {"timeout": float, "table": str, "synchronous": str}
# `sqlite3` hands SQLite the busy timeout in milliseconds as a C int: past this it wraps to no
# wait at all (a year reads back as 0 ms), and far past it the store's own waits overflow.
_MAX_TIMEOUT = (2**31 - 1) / 1000


class SQLiteStore(SQLiteFile):
    """A store in one SQLite database file, shared by threads and processes on one machine.

    The table and its indexes are created on first use; `create_schema` creates them ahead of
    time. The database's directory must exist: a path that cannot be opened makes every
    primitive raise `StoreUnavailableError`.

    Args:
        path: the database file; a relative path is resolved against the current directory now.
        clock: the time source for leases and retention.
        table: the table that holds the records.
        timeout: seconds to wait for another writer's lock before `StoreUnavailableError`, at
            most about 24 days (2**31 - 1 ms).
        synchronous: `"full"` (default) syncs every commit to disk, so a claim or outcome
            survives a power loss; `"normal"` is faster but may lose the last commits then.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        table: str = DEFAULT_TABLE,
        timeout: float = 5.0,
        synchronous: Synchronous = "full",
    ) -> None:
        path = os.fspath(path)
        if path in ("", ":memory:"):
            raise ConfigurationError(
                f"SQLite store path {path!r} is not a database file; an in-memory SQLite"
                " database is private to one connection, so use 'memory://' for that."
            )
        if not 0 <= timeout <= _MAX_TIMEOUT:  # nan and inf too
            raise ConfigurationError(
                f"SQLite busy timeout must be a finite number of seconds >= 0 and at most"
                f" {_MAX_TIMEOUT} (about 24 days), not {timeout}."
            )
        if synchronous not in get_args(Synchronous):
            raise ConfigurationError(
                f"SQLite synchronous must be 'full' or 'normal', not {synchronous!r}."
            )
        super().__init__(
            os.path.abspath(path),
            clock=clock or SystemClock(),
            table=table,
            timeout=timeout,
            synchronous=synchronous,
        )
        self._runner = SQLiteRunner(self)

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> SQLiteStore:
        """Build the store from `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`.

        Query options: `timeout` (busy timeout in seconds, default 5), `table` (default
        `retrysafe_records`), `synchronous` (`full`, the default, or `normal`).
        """
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ConfigurationError(f"An SQLite store URL is {_URL_FORMS}, not {url!r}.")
        if parts.netloc:
            raise ConfigurationError(
                f"An SQLite store URL has no host ({parts.netloc!r}): use {_URL_FORMS},"
                f" not {url!r}."
            )
        if parts.fragment:
            raise ConfigurationError(f"An SQLite store URL has no '#' fragment: {url!r}.")
        # The path after "sqlite://" starts with one slash that only separates it from the
        # empty host: "sqlite:///a.db" is the relative path "a.db", "sqlite:////a.db" is "/a.db".
        path = unquote(parts.path[1:])
        if not path:
            raise ConfigurationError(
                f"An SQLite store URL names a database file, {_URL_FORMS}; {url!r} names none."
            )
        options = query_options(parts.query, _OPTIONS, url=url)
        synchronous = str(options.get("synchronous", "full")).lower()
        if synchronous not in get_args(Synchronous):
            raise ConfigurationError(
                f"Store URL option synchronous={synchronous!r} must be 'full' or 'normal'."
            )
        return cls(
            path,
            clock=clock,
            table=str(options.get("table", DEFAULT_TABLE)),
            timeout=cast(float, options.get("timeout", 5.0)),
            synchronous=cast(Synchronous, synchronous),
        )

    def create_schema(self) -> None:
        """Create the records table and its indexes unless they exist (idempotent)."""
        self._runner.create_schema()

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record."""
        return self._runner.claim(identity, fingerprint, lease=lease, retention=retention)

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done."""
        return self._runner.write(
            lambda connection, now: self.table.complete(
                connection, identity, token, outcome, now=now, retention=retention
            ),
            one_statement=True,
        )

    def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record."""
        self._runner.write(
            lambda connection, now: self.table.release(connection, identity, token, now=now),
            one_statement=True,
        )

    def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease."""
        return self._runner.write(
            lambda connection, now: self.table.renew(
                connection, identity, token, now=now, lease=lease
            ),
            one_statement=True,
        )

    def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase."""
        return self._runner.write(
            lambda connection, now: self.table.checkpoint(
                connection, identity, token, recovery_point, now=now
            ),
            one_statement=True,
        )

    def get(self, identity: Identity) -> Record | None:
        """Return the live record, or None."""
        return self._runner.read(
            lambda connection, now: self.table.get(connection, identity, now=now)
        )

    def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state."""
        return self._runner.write(
            lambda connection, now: self.table.delete(connection, identity, now=now),
            one_statement=True,
        )

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention."""
        return self._runner.write(
            lambda connection, now: self.table.purge_expired(connection, now=now, limit=limit),
            one_statement=True,
        )

    def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """Return live records matching every given filter, newest first."""
        listing = Listing(**filters)
        return self._runner.scan(
            lambda connection, now: self.table.list_records(connection, listing, now=now)
        )

    def stats(self) -> StoreStats:
        """Return counts of live records."""
        return self._runner.scan(
            lambda connection, now: self.table.stats(connection, now=now)
        )

    def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Poll until the record settles or `timeout` passes."""
        return poll_until_settled(self, identity, timeout)

    def close(self) -> None:
        """Close the store's connections once the calls already running or queued are done; the
        store cannot be used afterwards."""
        self._runner.close()
