"""A COMMIT whose reply never comes (B29): the transaction may or may not have committed, and
the error says so, telling the caller to retry with the same key (the retry then replays or
runs, whichever is true), never that nothing of it was applied. Real PostgreSQL and MariaDB:
the connection's socket is shut down under the COMMIT."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrysafe import Identity, OutcomeUnknownError, StoreUnavailableError, transactions
from tests.transactions.conftest import Database, make_database


@pytest.fixture(params=["postgres", "mysql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A real PostgreSQL or MariaDB server with this test's own tables."""
    with make_database(str(request.param), request, tmp_path) as made:
        try:
            yield made
        finally:
            if made.kind == "postgres":
                made.execute(f'DROP TABLE IF EXISTS "{made.table}"')
                made.execute(f"DROP FUNCTION IF EXISTS {made.table}_cut()")


def _cut(conn: Any) -> None:
    """Shut the connection's socket down under the COMMIT waiting for its reply."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _lose_commit_reply(database: Database) -> Any:
    """Return a connection whose next COMMIT's reply is lost: on PostgreSQL a deferred trigger
    holds the COMMIT 2 s while the test shuts the socket down (`_cut`); on MariaDB the COMMIT
    is sent and the socket is shut down before its reply is read (the server commits)."""
    if database.kind == "postgres":
        warm = database.connect()
        with transactions.psycopg(  # creates the records table
            warm, identity=Identity("pay", "s", "warm"), fingerprint="f", table=database.table
        ) as tx:
            tx.complete(b"warm")
        warm.commit()
        warm.close()
        name = f"{database.table}_cut"
        database.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
        )
        database.execute(
            f'CREATE CONSTRAINT TRIGGER {name} AFTER UPDATE ON "{database.table}" '
            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}()"
        )
        return database.connect()
    import pymysql

    class LosingReply(pymysql.connections.Connection):  # type: ignore[misc]
        def commit(self) -> None:
            self._execute_command(pymysql.constants.COMMAND.COM_QUERY, "COMMIT")
            self._sock.shutdown(socket.SHUT_RDWR)
            self._read_ok_packet()

    return LosingReply(**database.mysql_options())


def test_b29_commit_without_reply_says_the_outcome_is_unknown(database: Database) -> None:
    """The block's COMMIT loses its reply: `OutcomeUnknownError`, a `StoreUnavailableError`,
    says the outcome is unknown and the caller must retry with the same key."""
    conn = _lose_commit_reply(database)
    block = transactions.psycopg if database.kind == "postgres" else transactions.mysql

    def pay() -> None:
        with block(
            conn,
            identity=Identity("pay", "s", "lost-commit"),
            fingerprint="f",
            table=database.table,
        ) as tx:
            tx.complete(b"paid")
            if database.kind == "postgres":
                threading.Timer(1.0, _cut, [conn]).start()

    try:
        with pytest.raises(OutcomeUnknownError) as raised:
            pay()
    finally:
        conn.close()
    assert isinstance(raised.value, StoreUnavailableError)  # what callers caught before
    message = str(raised.value)
    assert "nothing of it was applied" not in message
    assert "may or may not have committed" in message
    assert "same key" in message
