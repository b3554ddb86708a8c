"""B24: a store URL option that could only fail later is refused when the store opens, with one
clear `ConfigurationError`, rather than taken, to fail every call (every request a plain 500):
an infinite or overlong timeout (a raw overflow of a driver's or a thread's wait), an option
given twice (one of them silently dropped), a boolean that is neither yes nor no.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
from pathlib import Path

import pytest

from retrysafe import ConfigurationError, Identity, open_async_store, open_store
from retrysafe.stores.base import MAX_TIMEOUT
from retrysafe.stores.mysql import MySQLStore
from retrysafe.stores.postgres import PostgresStore
from retrysafe.stores.sqlite import SQLiteStore
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
    "redis-cluster": "redis+cluster://:secret@127.0.0.1:7000/",
}
# SQLite's busy timeout is milliseconds in a C int; past it `sqlite3` wraps it to no wait.
_SQLITE_MAX_TIMEOUT = (2**31 - 1) / 1000


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
        (f"{_URLS['redis-cluster']}?prefix=a&prefix=b", "prefix"),
        (f"{_URLS['redis-cluster']}?connect_timeout=1&connect_timeout=2", "connect_timeout"),
        ("sqlite:///x.db?table=a&table=b", "table"),
        ("sqlite:///x.db?timeout=1&synchronous=full&timeout=2", "timeout"),
        (f"{_URLS['redis']}?replay_cache=3&replay_cache=5", "replay_cache"),
        ("sqlite:///x.db?replay_cache=3&replay_cache_ttl=1&replay_cache_ttl=2", "replay_cache_ttl"),
    ],
)
def test_b24_an_option_given_twice_is_refused(url: str, option: str) -> None:
    """Two values for one option are refused, not one of them silently kept; the URL is shown
    without its password."""
    message = _refused(url)
    assert message.startswith(f"Store URL option {option} is given twice in '")


@pytest.mark.parametrize("value", ["inf", "nan", "1e300", str(MAX_TIMEOUT), "2147483.648"])
def test_b24_an_sqlite_busy_timeout_past_its_limit_is_refused(value: str, tmp_path: Path) -> None:
    """A busy timeout past 2**31 - 1 ms, which SQLite would take as no wait at all (a year) or
    which would overflow a wait on first use (1e300), is refused at open and by the constructor."""
    limit = "SQLite busy timeout must be a finite number of seconds >= 0 and at most 2147483.647"
    assert limit in _refused(f"sqlite:///{tmp_path / 's.db'}?timeout={value}")
    with pytest.raises(ConfigurationError, match=limit):
        SQLiteStore(tmp_path / "s.db", timeout=float(value))


def test_b24_the_longest_sqlite_busy_timeout_waits_for_a_lock(tmp_path: Path) -> None:
    """At the limit the busy timeout still works: a claim waits out another connection's write
    lock instead of failing at once."""
    path = tmp_path / "s.db"
    store = SQLiteStore.from_url(f"sqlite:///{path}?timeout={_SQLITE_MAX_TIMEOUT}")
    try:
        store.create_schema()
        with contextlib.closing(sqlite3.connect(path, check_same_thread=False)) as holder:
            holder.isolation_level = None
            holder.execute("BEGIN IMMEDIATE")
            threading.Timer(0.3, holder.execute, ["COMMIT"]).start()
            identity = Identity("url-limits", "tenant", "k")
            assert store.claim(identity, "fp", lease=30, retention=60).acquired
    finally:
        store.close()


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
