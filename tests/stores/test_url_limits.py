"""B24: a store URL option that could only fail later is refused when the store opens, with one
clear `ConfigurationError`, rather than taken, to fail every call (every request a plain 500):
an infinite or overlong timeout (a raw overflow of a driver's or a thread's wait), an option
given twice (one of them silently dropped), a boolean that is neither yes nor no.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from retrysafe import ConfigurationError, Identity, open_async_store, open_store
from retrysafe.stores.base import MAX_TIMEOUT
from retrysafe.stores.mysql import MySQLStore
from retrysafe.stores.postgres import PostgresStore
from tests.conftest import fresh_store_url

# Each server store's timeout options. Nothing here connects: the URLs are refused first.
_TIMEOUTS = {
    "redis": ("socket_timeout", "connect_timeout"),
    "postgres": ("connect_timeout", "pool_timeout", "read_timeout"),
    "mysql": ("connect_timeout", "pool_timeout", "read_timeout"),
}
_URLS = {
    "redis": "redis://:secret@127.0.0.1:6379/15",
    "postgres": "postgresql://postgres:secret@127.0.0.1:5432/test",
    "mysql": "mysql://root:secret@127.0.0.1:3306/test",
}


def _refused(url: str) -> str:
    """Return the message of the `ConfigurationError` both faces refuse `url` with (the same)."""
    messages = set()
    for opener in (open_store, open_async_store):
        with pytest.raises(ConfigurationError) as refused:
            opener(url)
        messages.add(str(refused.value))
    (message,) = messages
    assert "secret" not in message
    return message


@pytest.mark.parametrize("value", ["inf", "infinity", "1e300", str(MAX_TIMEOUT + 1)])
@pytest.mark.parametrize(
    ("backend", "option"), [(b, o) for b, opts in _TIMEOUTS.items() for o in opts]
)
def test_b24_an_endless_timeout_is_refused_when_the_store_opens(
    backend: str, option: str, value: str
) -> None:
    """An infinite timeout, or one past a year, is refused at open, the option named."""
    message = _refused(f"{_URLS[backend]}?{option}={value}")
    assert f"store's {option} must be more than 0 and at most 31536000 seconds" in message


def test_b24_an_endless_timeout_is_refused_by_the_constructors() -> None:
    """The stores' own constructors refuse it too: the URL is not the only way in."""
    with pytest.raises(ConfigurationError, match="read_timeout"):
        PostgresStore("postgresql://127.0.0.1/test", read_timeout=math.inf)
    with pytest.raises(ConfigurationError, match="pool_timeout"):
        MySQLStore(host="127.0.0.1", user="root", database="test", pool_timeout=math.inf)


@pytest.mark.parametrize("backend", ["redis", "postgres", "mysql"])
def test_b24_a_timeout_of_a_year_works(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The longest timeout taken is a working one: a claim and its completion go through."""
    with fresh_store_url(backend, request, tmp_path) as url:
        year = "&".join(f"{option}={MAX_TIMEOUT:.0f}" for option in _TIMEOUTS[backend])
        store = open_store(f"{url}&{year}")
        try:
            identity = Identity("url-limits", "tenant", "k")
            claim = store.claim(identity, "fp", lease=30, retention=60)
            assert claim.acquired
            assert store.complete(identity, claim.token, b"done", retention=60).outcome == b"done"
        finally:
            store.close()


@pytest.mark.parametrize(
    ("url", "option"),
    [
        (f"{_URLS['redis']}?prefix=a&prefix=b", "prefix"),
        (f"{_URLS['redis']}?socket_timeout=1&socket_timeout=2", "socket_timeout"),
        (f"{_URLS['postgres']}?table=a&table=b", "table"),
        (f"{_URLS['postgres']}?pool_max=1&pool_min=1&pool_max=5", "pool_max"),
        (f"{_URLS['mysql']}?table=a&table=b", "table"),
    ],
)
def test_b24_an_option_given_twice_is_refused(url: str, option: str) -> None:
    """Two values for one option are refused, not one of them silently kept; the URL is shown
    without its password."""
    message = _refused(url)
    assert message.startswith(f"Store URL option {option} is given twice in '")


@pytest.mark.parametrize(
    "url",
    [
        f"{_URLS['redis']}?autopipeline=maybe",
        f"{_URLS['postgres']}?autopipeline=",
        f"{_URLS['mysql']}?ssl=sure",
    ],
)
def test_b24_a_boolean_option_is_yes_or_no(url: str) -> None:
    """A boolean option takes 1, true, yes, on or 0, false, no, off; anything else, refused,
    would have been taken as false."""
    assert "is not a valid bool" in _refused(url)


def test_b24_boolean_words_in_any_case_are_taken() -> None:
    """`FALSE`, `Off` and `YES` are understood, as before."""
    for words in ("autopipeline=FALSE", "autopipeline=Off", "autopipeline=YES"):
        open_store(f"{_URLS['postgres']}?{words}").close()
