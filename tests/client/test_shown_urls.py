"""What the client prints of a URL (SPEC B33's retry log, hooks and errors): never its
credentials, on all three faces, against real servers."""

from __future__ import annotations

import logging

import pytest

from retrysafe.client import NotReplayableError, RetryEvent, RetryPolicy
from retrysafe.client._urls import shown_url
from tests.client.conftest import HANG, Answer, Scripted, Sleeps
from tests.client.faces import FACES, Face
from tests.servers import refused_port

SECRETS = ("alice", "S3cr3tPassw0rd", "tok_live_ABC", "KEY123")
LOGIN = "alice:S3cr3tPassw0rd@"
QUERY = "?token=tok_live_ABC&api_key=KEY123"
FAST = RetryPolicy(attempts=3, timeout=30.0, wait_initial=0.01, wait_max=0.05)


def _with_secrets(url: str) -> str:
    """`url` with a user name, a password and two secret query parameters."""
    return url.replace("http://", f"http://{LOGIN}") + QUERY


def _shown(url: str) -> str:
    """What the client shows of `_with_secrets(url)`."""
    return url.replace("http://", "http://***@") + "?token=***&api_key=***"


def _clean(text: str) -> bool:
    return not any(secret in text for secret in SECRETS)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.example/pay", "https://api.example/pay"),
        ("https://sk_live_1:@api.example/pay", "https://***@api.example/pay"),
        ("http://u:p@h:8080/p?a=1&b=&flag#frag", "http://***@h:8080/p?a=***&b=***&***"),
        ("http://[::1/p", "http://(unparseable)"),
    ],
)
def test_b33_a_shown_url_hides_the_login_and_every_query_value(url: str, shown: str) -> None:
    """The user information (a secret key can be the user name) and every query value are
    hidden, since the client cannot tell which are secrets; the fragment is never sent."""
    assert shown_url(url) == shown


@pytest.mark.parametrize("name", FACES)
def test_b33_the_retry_log_and_hooks_never_show_credentials(
    name: str, scripted: Scripted, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    """A retried request to a URL with a password and tokens is logged, and told to hooks, with
    them hidden."""
    events: list[RetryEvent] = []
    face = Face(name, FAST, sleeps, hooks=[events.append])
    url, script = scripted.script(Answer(503, {"Retry-After": "0"}), Answer(201))
    with caplog.at_level(logging.INFO, logger="retrysafe.client"):
        assert face.request("POST", _with_secrets(url), content=b"x").status == 201
    assert len(script.seen) == 2
    (event,) = events
    assert event.url == _shown(url)
    lines = [r.getMessage() for r in caplog.records if r.name == "retrysafe.client"]
    assert len(lines) == 1
    assert _shown(url) in lines[0]
    assert _clean(lines[0])


@pytest.mark.parametrize("name", FACES)
def test_b33_the_error_of_the_total_time_bound_never_shows_credentials(
    name: str, scripted: Scripted
) -> None:
    """The timeout error of a request cut at the bound names the URL with its secrets hidden."""
    face = Face(name, RetryPolicy(attempts=2, timeout=0.3), None)
    url, _ = scripted.script(Answer(HANG))
    with pytest.raises(Exception) as caught:  # noqa: PT011 -- each face has its timeout type
        face.request("POST", _with_secrets(url), content=b"x", timeout=30.0)
    assert "RetryPolicy.timeout" in str(caught.value)
    assert _shown(url) in str(caught.value)
    assert _clean(str(caught.value))


@pytest.mark.parametrize("name", FACES)
def test_b33_a_not_replayable_error_never_shows_credentials(name: str, sleeps: Sleeps) -> None:
    """A stream body that could not be retried raises an error naming the URL with its secrets
    hidden, without the words of the error on the wire (requests puts the query in them); that
    error is its cause."""
    url = f"http://127.0.0.1:{refused_port()}/pay"
    face = Face(name, FAST, sleeps)
    with pytest.raises(NotReplayableError) as caught:
        face.request("POST", _with_secrets(url), chunks=[b"a", b"b"])
    assert caught.value.__cause__ is not None
    assert str(caught.value).startswith(f"POST {_shown(url)} failed")
    assert _clean(str(caught.value))
