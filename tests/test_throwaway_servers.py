"""The throwaway MariaDB and NATS servers scripts/services.py starts when none is reachable
serve what the tests need: a `test` database with InnoDB, and JetStream.

Marked with their services, so they run with the service tests (once, in the main run), not in
the side-by-side runs of the other Pythons: there one install failed (exit 1) while the other
Python's run was installing at the same moment; its error output is now kept in the message."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import service_missing

# The scripts folder goes on the path last: nothing there may shadow an installed module.
_SCRIPTS = str(Path(__file__).resolve().parent.parent / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.append(_SCRIPTS)

import throwaway  # noqa: E402  (scripts/throwaway.py, found through the path above)


def need(binary: str) -> None:
    """Skip loudly (fail under CI=true) when a local server binary is missing."""
    if shutil.which(binary) is None:
        service_missing(binary, f"no local {binary!r} binary to start a throwaway server from")


@pytest.mark.mysql
def test_a_throwaway_mariadb_has_an_empty_test_database_with_innodb(tmp_path: Path) -> None:
    """A table created in `test` is InnoDB (transactions, row locks), and it starts empty."""
    need("mariadbd")
    import pymysql

    with throwaway.throwaway_mariadb(tmp_path) as url:
        parts = urlsplit(url)
        conn = pymysql.connect(
            host=parts.hostname, port=parts.port, user=parts.username, database="test"
        )
        with conn, conn.cursor() as cursor:
            cursor.execute("SHOW TABLES")
            assert cursor.fetchall() == ()
            cursor.execute("CREATE TABLE t (id INT PRIMARY KEY)")
            cursor.execute(
                "SELECT engine FROM information_schema.tables"
                " WHERE table_schema = 'test' AND table_name = 't'"
            )
            assert cursor.fetchone() == ("InnoDB",)


@pytest.mark.nats
def test_a_throwaway_nats_server_has_jetstream(tmp_path: Path) -> None:
    """A stream can be made and a publish to it is acknowledged by JetStream."""
    need("nats-server")
    import nats

    async def publish(url: str) -> int:
        client = await nats.connect(url)
        try:
            stream = client.jetstream()
            await stream.add_stream(name="throwaway", subjects=["throwaway.>"])
            ack = await stream.publish("throwaway.one", b"1")
            return ack.seq
        finally:
            await client.close()

    with throwaway.throwaway_nats(tmp_path) as url:
        assert asyncio.run(publish(url)) == 1
