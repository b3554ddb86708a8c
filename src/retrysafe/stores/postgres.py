"""The PostgreSQL store (`postgresql://user@host/db`): production, shared by many processes.

Needs the `postgres` extra (psycopg 3 and psycopg_pool): `pip install 'retrysafe[postgres]'`.
"""

from retrysafe.stores._async.postgres import AsyncPostgresStore
from retrysafe.stores._sync.postgres import PostgresStore

__all__ = ["AsyncPostgresStore", "PostgresStore"]
