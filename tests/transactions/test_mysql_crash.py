"""Crash tests on MySQL and MariaDB (B29, B30): workers killed with SIGKILL at every point.

test_crash.py's tests, on the MySQL server: each run is a fresh worker process on PyMySQL
(`python -m tests.transactions.worker --db mysql`), killed before the write, after it, and
after the commit before it answers; or inside and between the phases of a phased order that
calls a real payment provider. After every kill the payment and its record are both committed
or both absent, and across every retry the effect happens once.
"""

from __future__ import annotations

import pytest

from tests.transactions.conftest import Database
from tests.transactions.test_crash import (
    provider,
    test_b29_sigkill_at_every_point_leaves_exactly_one_effect,
    test_b30_sigkill_between_and_inside_phases_charges_once,
)

pytestmark = pytest.mark.mysql

__all__ = [
    "provider",
    "test_b29_sigkill_at_every_point_leaves_exactly_one_effect",
    "test_b30_sigkill_between_and_inside_phases_charges_once",
]


@pytest.fixture
def database(mysql_database: Database) -> Database:
    """The crash tests' database: here, the MySQL server."""
    return mysql_database
