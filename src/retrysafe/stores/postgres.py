"""The PostgreSQL store (`postgresql://user@host/db`): production, shared by many processes.

Needs the `postgres` extra (psycopg 3 and psycopg_pool): `pip install 'retrysafe[postgres]'`.
"""

from retrysafe._extras import missing_extra

try:
    from retrysafe.stores._async.postgres import AsyncPostgresStore
    from retrysafe.stores._sync.postgres import PostgresStore
except ImportError as error:
    raise missing_extra("The PostgreSQL store", "postgres", error) from error

__all__ = ["AsyncPostgresStore", "PostgresStore"]
