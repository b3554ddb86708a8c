"""The client's pure parts: the policy, Retry-After, replay detection, and the optional import."""

from __future__ import annotations

import email.utils
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

import retrysafe.client
from retrysafe import ConfigurationError, IdempotencyError
from retrysafe.client import Handling, NotReplayableError, RetryEvent, RetryPolicy, is_replay
from retrysafe.client._core import parse_retry_after
from retrysafe.demo._relay import FaultPlan, serve_relay
from tests.client.conftest import Answer, Scripted, Sleeps
from tests.client.faces import FACES, Face


def test_client_exports_are_sorted_and_importable() -> None:
    """The public names are listed sorted, and each one imports."""
    assert retrysafe.client.__all__ == sorted(retrysafe.client.__all__)
    for name in retrysafe.client.__all__:
        assert getattr(retrysafe.client, name) is not None


def test_not_replayable_error_is_an_idempotency_error() -> None:
    """NotReplayableError is caught by the one root, IdempotencyError."""
    assert issubclass(NotReplayableError, IdempotencyError)


@pytest.mark.parametrize(
    ("method", "handling"),
    [
        ("POST", Handling.KEYED),
        ("patch", Handling.KEYED),
        ("GET", Handling.RETRIED),
        ("HEAD", Handling.RETRIED),
        ("OPTIONS", Handling.RETRIED),
        ("TRACE", Handling.RETRIED),
        ("PUT", Handling.RETRIED),
        ("DELETE", Handling.RETRIED),
        ("LOCK", Handling.PASSED),
        ("CONNECT", Handling.PASSED),
    ],
)
def test_b33_methods_are_handled_per_rfc_9110(method: str, handling: Handling) -> None:
    """POST/PATCH get keys, safe and idempotent methods retry bare, the rest are sent once."""
    assert RetryPolicy().handling(method) is handling


def test_b32_covered_methods_are_configurable() -> None:
    """Adding PUT to the covered methods gives it a key too."""
    assert RetryPolicy(key_methods=frozenset({"post", "put"})).handling("PUT") is Handling.KEYED


@pytest.mark.parametrize(
    "options",
    [
        {"attempts": 0},
        {"timeout": 0.0},
        {"wait_initial": -1.0},
        {"retry_after_max": -1.0},
        {"retry_statuses": frozenset({503, 422})},
        {"retry_statuses": frozenset({400})},
        {"timeout": float("inf")},
        {"timeout": float("nan")},
        {"wait_initial": float("nan")},
        {"retry_after_max": float("inf")},
        {"attempts": 2.5},
        {"attempts": float("nan")},
        {"retry_statuses": frozenset({"503"})},
        {"key_methods": "POST"},
    ],
)
def test_b33_policy_refuses_invalid_values(options: dict[str, object]) -> None:
    """Nonsense bounds are refused, and 400/422 can never be made retryable. So are values
    that would fail at the first request, after it was sent (an infinite or NaN timeout), or
    silently turn retries off: a status as a string, one string for the methods ("POST" would
    be the methods P, O, S and T), a fractional attempt count."""
    with pytest.raises(ConfigurationError):
        RetryPolicy(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        (None, None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("²", None),
    ],
)
def test_b33_retry_after_delta_seconds(value: str | None, seconds: float | None) -> None:
    """Retry-After as delta-seconds is read; anything that is not a count is ignored."""
    assert parse_retry_after(value) == seconds


def test_b33_retry_after_http_date() -> None:
    """Retry-After as an HTTP date is the time left until it, and never negative."""
    now = 1_700_000_000.0
    later = email.utils.formatdate(now + 90, usegmt=True)
    earlier = email.utils.formatdate(now - 90, usegmt=True)
    assert parse_retry_after(later, now=lambda: now) == pytest.approx(90.0)
    assert parse_retry_after(earlier, now=lambda: now) == 0.0


def test_b33_retry_after_in_every_http_date_form() -> None:
    """RFC 9110 5.6.7: a recipient reads all three date forms, asctime's (which names no zone)
    as UTC like the others."""
    now = 1_700_000_000.0
    later = time.gmtime(now + 90)
    forms = [
        email.utils.formatdate(now + 90, usegmt=True),  # IMF-fixdate
        time.strftime("%A, %d-%b-%y %H:%M:%S GMT", later),  # RFC 850
        time.asctime(later),  # asctime: no zone
    ]
    for form in forms:
        assert parse_retry_after(form, now=lambda: now) == pytest.approx(90.0), form


@pytest.mark.parametrize(
    ("value", "replayed"),
    [("true", True), ("TRUE", True), ("?1", True), ("false", False), (None, False)],
)
def test_b33_is_replay_reads_the_header(value: str | None, replayed: bool) -> None:
    """is_replay is True only for a true value of Idempotent-Replayed."""
    headers = {} if value is None else {"Idempotent-Replayed": value}
    assert is_replay(httpx.Response(200, headers=headers)) is replayed


@pytest.mark.parametrize("face_name", FACES)
def test_b33_hooks_see_the_exception_of_a_lost_response(
    face_name: str, scripted: Scripted, sleeps: Sleeps
) -> None:
    """A retry after a lost response tells the hooks the attempt, the delay and the error."""
    events: list[RetryEvent] = []
    face = Face(face_name, RetryPolicy(wait_initial=0.5), sleeps, [events.append])
    url, script = scripted.script(Answer(201))
    base, name = url.split("/s/")
    with serve_relay(base, FaultPlan(loss=0.6, seed=3)) as relay:
        assert face.request("POST", f"{relay.url}/s/{name}", content=b"x").status == 201
    assert len(events) == relay.counters.lost == len(script.seen) - 1 > 0
    assert [event.attempt for event in events] == list(range(1, len(events) + 1))
    assert [event.delay for event in events] == sleeps.delays
    assert all(event.error is not None and event.status is None for event in events)
    assert all(event.cause in {"RemoteProtocolError", "ConnectionError"} for event in events)
    assert all(event.method == "POST" for event in events)
    assert len({event.idempotency_key for event in events}) == 1


def test_importing_the_client_works_without_requests() -> None:
    """Without requests the module imports, and asking for the adapter says what to install."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["requests"] = None  # as if requests were not installed
        import retrysafe.client
        from retrysafe.client import IdempotentTransport
        try:
            from retrysafe.client import IdempotentAdapter
        except ImportError as error:
            print(error)
        else:
            raise SystemExit("the adapter imported without requests")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'retrysafe[requests]'" in done.stdout
    assert "pip install" in done.stdout
