"""The SQLite store (`sqlite:///path/to.db`): the embedded default, durable, zero set-up."""

from retrysafe.stores._async.sqlite import AsyncSQLiteStore
from retrysafe.stores._sync.sqlite import SQLiteStore

__all__ = ["AsyncSQLiteStore", "SQLiteStore"]
