"""Transactional mode on Django's ORM on MySQL and MariaDB (B29-B31, B14, B10).

test_django_orm.py's and test_django_crash.py's tests, on the MySQL server: the project of
tests/transactions/django_app.py runs with `django.db.backends.mysql` (PyMySQL installed as
`MySQLdb`) in processes of its own. The record and the ORM's rows commit together in
`transaction.atomic` or not at all: as a unit of work, in the caller's atomic block, as atomic
phases, through the write helpers, and as a `@transactional` view behind a real server (with
concurrent duplicates); and after a SIGKILL at every point, both or neither.
"""

from __future__ import annotations

import pytest

from tests.transactions.conftest import Database
from tests.transactions.test_django_crash import (
    test_b29_django_sigkill_at_every_point_leaves_both_or_neither,
)
from tests.transactions.test_django_orm import (
    served,
    test_b14_django_view_runs_once_under_concurrent_duplicates,
    test_b29_b10_django_view_commits_its_response_with_its_writes,
    test_b29_django_atomic_commits_and_rolls_back_with_the_callers_atomic_block,
    test_b29_django_atomic_commits_the_record_with_the_orm_write,
    test_b30_django_phases_resume_after_the_last_committed_phase,
    test_b31_django_write_helpers_repeat_safely,
)

pytestmark = pytest.mark.mysql

__all__ = [
    "served",
    "test_b14_django_view_runs_once_under_concurrent_duplicates",
    "test_b29_b10_django_view_commits_its_response_with_its_writes",
    "test_b29_django_atomic_commits_and_rolls_back_with_the_callers_atomic_block",
    "test_b29_django_atomic_commits_the_record_with_the_orm_write",
    "test_b29_django_sigkill_at_every_point_leaves_both_or_neither",
    "test_b30_django_phases_resume_after_the_last_committed_phase",
    "test_b31_django_write_helpers_repeat_safely",
]


@pytest.fixture
def database(mysql_database: Database) -> Database:
    """The Django project's database: here, the MySQL server."""
    return mysql_database
