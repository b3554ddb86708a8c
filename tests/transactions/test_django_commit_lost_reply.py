"""Django's COMMIT whose reply never comes (B29): the outcome is unknown, and the key is not
given back for a second run.

As tests/transactions/test_commit_lost_reply.py for the raw drivers, with its helpers and its
`database` fixture (the real PostgreSQL and MariaDB servers): the project of
tests/transactions/django_app.py runs a unit of work (`atomic`) and a `@transactional` view
whose COMMIT loses its reply, then their retries under the same keys, in a process of its own.
"""

from __future__ import annotations

import json

from retrysafe import State
from tests.transactions.conftest import Database
from tests.transactions.test_commit_lost_reply import database
from tests.transactions.test_django_orm import record, scenario

__all__ = ["database"]


def test_b29_django_commit_without_reply_says_the_outcome_is_unknown(database: Database) -> None:
    """The unit of work's COMMIT loses its reply: `OutcomeUnknownError` (a
    `StoreUnavailableError`) says the outcome is unknown and the caller must retry with the
    same key (before: "rolled back ... nothing of it was applied", or Django's own error). The
    server committed it, so the retry replays it and the payment is made once; the view's
    request gets a 503 whose problem says so too (it said "the request was not processed"),
    and its retry the stored response."""
    reported = scenario(database, "lost_commit")
    unit = reported["unit"]
    assert unit.get("error") == "OutcomeUnknownError", unit
    assert "nothing of it was applied" not in unit["message"]
    assert "may or may not have committed" in unit["message"]
    assert "same key" in unit["message"]
    (row,) = database.payment_rows("l-1")
    assert record(database, "l-1").state is State.DONE
    assert reported["unit_retry"] == {"replay": True, "outcome": json.dumps({"id": row[0]})}

    assert reported["view"]["status"] == 503
    detail = json.loads(reported["view"]["outcome"])["detail"]
    assert "was not processed" not in detail
    assert "may or may not have been applied" in detail
    assert "same Idempotency-Key only" in detail
    (logged,) = reported["view_logged"]  # the log says so too, not "it was not applied"
    assert "may or may not have committed" in logged, logged
    (row,) = database.payment_rows("l-2")
    retry = reported["view_retry"]
    assert (retry["status"], retry["replay"]) == (201, True)
    assert json.loads(retry["outcome"]) == {"id": row[0]}
