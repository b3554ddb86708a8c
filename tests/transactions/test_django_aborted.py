"""Django's `@transactional`: a view that caught a database error, and async views (B29).

The project of tests/transactions/django_app.py runs in a process of its own on the `database`
fixture (a SQLite file, or the real PostgreSQL server), as in test_django_orm.py.
"""

from __future__ import annotations

from tests.transactions.conftest import Database
from tests.transactions.test_django_orm import scenario

PROBLEM_TYPE = "https://retrysafe.readthedocs.io/en/latest/transactions/#transaction-aborted"
ABORTED = [500, PROBLEM_TYPE, None]
"""The answer to a view whose transaction was aborted: a 500 problem, without Retry-After."""


def test_b29_a_view_that_caught_a_database_error_gets_a_500(database: Database) -> None:
    """A view that caught the IntegrityError of an ORM write has its atomic block marked for
    rollback by Django, on every database: its 409 is replaced by the 500 problem, with a key
    or without, again on a retry, each logged naming the view, and nothing is committed. A
    raw cursor's caught error aborts the transaction on PostgreSQL only: on SQLite the 409
    commits with the view's first write."""
    reported = scenario(database, "aborted")
    answers = reported["answers"]
    assert answers["orm"] == ABORTED
    assert answers["orm-again"] == ABORTED  # the key was released, not left in flight
    assert answers["unkeyed"] == ABORTED
    if database.kind == "postgres":
        assert answers["raw"] == ABORTED
        assert database.payment_rows("a-2") == []
    else:
        assert answers["raw"] == [409, None, None]
        assert len(database.payment_rows("a-2")) == 1
    assert database.payment_rows("a-1") == []
    assert database.payment_rows("None") == []
    aborted = sum(answer == ABORTED for answer in answers.values())
    assert len([line for line in reported["logged"] if "signup" in line]) == aborted


def test_b29_an_async_view_is_refused_and_never_left_unawaited(database: Database) -> None:
    """An async class-based view is refused when decorated (asgiref marks its `as_view()` a
    coroutine function, which `inspect` does not see on Python 3.11), and a sync callable
    that returns a coroutine is refused when called: a TypeError saying why, the coroutine
    closed rather than left never awaited, and no 500 with an AttributeError."""
    reported = scenario(database, "async_view")
    assert "sync view" in reported["decorated"]
    assert "sync view" in reported["called"]
    assert reported["never_awaited"] == []
