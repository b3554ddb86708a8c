"""Waits the client computes from what it cannot control (SPEC B33: exponential backoff, and
`Retry-After` honoured): a long run of attempts and an absurd `Retry-After` date never raise
`OverflowError` out of a request."""

from __future__ import annotations

import pytest

from retrysafe.client import RetryPolicy
from retrysafe.client._headers import parse_retry_after
from tests.client.conftest import Answer, Scripted, Sleeps
from tests.client.faces import FACES, Face

ABSURD_DATES = [
    "Sun, 06 Nov 99999999999 08:49:37 GMT",  # past what a C time_t or a datetime holds
    "Sun, 06 Nov 99999 08:49:37 GMT",  # past what a datetime holds
]


@pytest.mark.parametrize("value", ABSURD_DATES)
def test_b33_a_retry_after_date_no_calendar_holds_is_ignored(value: str) -> None:
    """Such a date is not a delay: the client backs off as if the header were absent."""
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("name", FACES)
def test_b33_a_503_with_an_absurd_retry_after_date_is_retried(
    name: str, scripted: Scripted, sleeps: Sleeps
) -> None:
    """A real server's 503 whose `Retry-After` is a date in the year 99999999999 is retried
    after a jittered backoff (not the date), and the retry's 201 is returned."""
    url, script = scripted.script(
        Answer(503, {"Retry-After": ABSURD_DATES[0]}), Answer(201, body=b"ok")
    )
    outcome = Face(name, RetryPolicy(), sleeps).request("POST", url, content=b"x")
    assert outcome.status == 201
    assert len(script.seen) == 2
    assert len(sleeps.delays) == 1
    assert 0.0 <= sleeps.delays[0] <= RetryPolicy().wait_initial


def test_b33_the_backoff_outlives_more_than_1025_attempts(
    scripted: Scripted, sleeps: Sleeps
) -> None:
    """With 1100 attempts allowed against a server that keeps answering 503, the doubling
    ceiling stays at `wait_max` (it overflowed a float at attempt 1026) and the last 503 is
    returned once the attempts are spent."""
    url, script = scripted.script(Answer(503))
    policy = RetryPolicy(attempts=1100, wait_initial=1e-6, wait_max=1e-6)
    outcome = Face("sync", policy, sleeps).request("POST", url, content=b"x")
    assert outcome.status == 503
    assert len(script.seen) == 1100
    assert max(sleeps.delays) <= 1e-6
