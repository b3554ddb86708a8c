"""Atomic phases on MySQL and MariaDB (B30, B17): each phase commits with its recovery point.

The tests of test_phases.py run here on each MySQL face: those written for every face take
this module's `order` (`MySQLOrder`), and the fencing tests, written for one database, are
called with the MySQL one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from retrysafe import ManualClock
from tests.transactions import test_phases as shared
from tests.transactions.conftest import Database, Face
from tests.transactions.test_phases import (
    Order,
    test_b13_b16_duplicates_of_a_live_operation_are_refused,
    test_b30_a_failed_phase_resumes_after_the_last_committed_one,
    test_b30_a_phase_may_finish_the_operation_early,
    test_b30_phases_commit_in_order_then_replay,
)

pytestmark = pytest.mark.mysql

__all__ = [
    "test_b13_b16_duplicates_of_a_live_operation_are_refused",
    "test_b30_a_failed_phase_resumes_after_the_last_committed_one",
    "test_b30_a_phase_may_finish_the_operation_early",
    "test_b30_phases_commit_in_order_then_replay",
]


class MySQLOrder(Order):
    """`Order` on a MySQL face: aiomysql connections and `mysql+aiomysql` sessions when async."""

    @contextlib.asynccontextmanager
    async def _aconnection(self) -> AsyncIterator[object]:
        if self.face.name == "aiomysql-async":
            connection = await self.database.aconnect()
            try:
                yield connection
            finally:
                await connection.ensure_closed()
            return
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
        from sqlalchemy.pool import NullPool

        url = self.database.sqlalchemy_url(asynchronous=True)
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with AsyncSession(engine) as session:
                yield session
        finally:
            await engine.dispose()


@pytest.fixture
def order(mysql_face: Face) -> Order:
    """A phased order on each MySQL face."""
    return MySQLOrder(mysql_face)


def test_b17_a_taken_over_holder_cannot_renew_or_checkpoint_on_mysql(
    mysql_database: Database, clock: ManualClock
) -> None:
    """Once a retry has taken the record over, the old holder's renewal and checkpoint raise
    FencedError (test_phases.py's test, on PyMySQL)."""
    shared.test_b17_a_taken_over_holder_cannot_renew_or_checkpoint(mysql_database, clock)
