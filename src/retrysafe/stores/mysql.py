"""The MySQL/MariaDB store (`mysql://user[:password]@host[:port]/db`): production, shared by many
processes.

Needs the `mysql` extra (PyMySQL for the sync store, aiomysql for the async one):
`pip install 'retrysafe[mysql]'`.
"""

from retrysafe._extras import missing_extra

try:
    from retrysafe.stores._async.mysql import AsyncMySQLStore
    from retrysafe.stores._sync.mysql import MySQLStore
except ImportError as error:
    raise missing_extra("The MySQL store", "mysql", error) from error

__all__ = ["AsyncMySQLStore", "MySQLStore"]
