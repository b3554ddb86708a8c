"""SPEC B35 (the admin tools' records stay with the operator): the console's login cookie is a
random session id kept by the console process for SESSION_SECONDS, so a cookie that leaks (any
service on the same host name receives it) dies with its session or with the process."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Iterator

import httpx

from retrysafe import ManualClock, Store
from retrysafe.console import create_app
from retrysafe.console._auth import COOKIE, SESSION_SECONDS
from tests.console.conftest import TOKEN
from tests.servers import AsgiServer


@contextlib.contextmanager
def _console(store: Store) -> Iterator[str]:
    """Serve a console process over `store`; yield its URL."""
    server = AsgiServer(create_app(store, TOKEN))
    try:
        yield server.url
    finally:
        server.stop()


def _login(url: str) -> httpx.Response:
    with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
        return client.get("/", params={"token": TOKEN})


def _with_cookie(url: str, cookie: str) -> int:
    """The status of the API's summary asked with only the session cookie."""
    with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
        return client.get("/api/summary", headers={"cookie": f"{COOKIE}={cookie}"}).status_code


def test_b35_each_login_gets_its_own_random_session_cookie_with_an_expiry(store: Store) -> None:
    """Two logins get two different cookies, neither the token nor derived from it, each set
    with a Max-Age of SESSION_SECONDS; each opens the API."""
    with _console(store) as url:
        logins = [_login(url) for _ in range(2)]
        cookies = [login.cookies[COOKIE] for login in logins]
        assert cookies[0] != cookies[1]
        derived = hmac.new(TOKEN.encode(), b"cookie", hashlib.sha256).hexdigest()
        assert TOKEN not in cookies
        assert derived not in cookies
        for login in logins:
            assert f"max-age={SESSION_SECONDS}" in login.headers["set-cookie"].lower()
        assert [_with_cookie(url, cookie) for cookie in cookies] == [200, 200]


def test_b35_a_session_cookie_is_refused_once_its_session_ended(
    store: Store, clock: ManualClock
) -> None:
    """Past SESSION_SECONDS the cookie answers 401; a new login opens the API again."""
    with _console(store) as url:
        cookie = _login(url).cookies[COOKIE]
        clock.advance(SESSION_SECONDS - 1)
        assert _with_cookie(url, cookie) == 200
        clock.advance(1)
        assert _with_cookie(url, cookie) == 401
        assert _with_cookie(url, _login(url).cookies[COOKIE]) == 200


def test_b35_a_session_cookie_dies_with_the_console_process(store: Store) -> None:
    """A cookie of one console is refused by the next one over the same store and token."""
    with _console(store) as url:
        cookie = _login(url).cookies[COOKIE]
        assert _with_cookie(url, cookie) == 200
    with _console(store) as url:
        assert _with_cookie(url, cookie) == 401
