"""SPEC B24 in the console: what it cannot read or show is an error page or problem+json, never
a plain-text 500. A record kept for 31,700 years (written by a tool that does not bound
retention) is shown; a row another tool wrote wrong is a 500 problem, logged with its cause."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrysafe import Identity, open_store
from retrysafe.console import create_app
from tests.console.conftest import TOKEN, Console
from tests.servers import AsgiServer

HUGE = Identity("jobs", "", "kept-forever")
BROKEN = Identity("broken", "", "bad-row")
PATHS = ("/api/records?namespace={ns}", "/records?namespace={ns}")


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    """The console over a SQLite store holding HUGE (retention 1e12 s) and BROKEN (its
    `created_at` made text by hand, as a broken migration would)."""
    url = f"sqlite:///{tmp_path / 'console.db'}"
    with contextlib.closing(open_store(url)) as writer:
        for identity in (HUGE, BROKEN):
            claim = writer.claim(identity, "fp", lease=30, retention=1e12)
            writer.complete(identity, claim.token, b"[1]", retention=1e12)
    with contextlib.closing(sqlite3.connect(tmp_path / "console.db")) as database:
        database.execute(
            "UPDATE retrysafe_records SET created_at = 'soon' WHERE namespace = ?", (b"broken",)
        )
        database.commit()
    store = open_store(url)
    server = AsgiServer(create_app(store, TOKEN))
    try:
        yield Console(server.url, url, ())
    finally:
        server.stop()
        store.close()


@pytest.mark.parametrize(
    "path",
    [*PATHS, "/record?namespace=jobs&scope=&key=kept-forever",
     "/api/record?namespace=jobs&scope=&key=kept-forever"],
)  # fmt: skip
def test_b24_a_record_kept_for_millennia_is_shown(console: Console, path: str) -> None:
    """Its expiry is past what a date holds: the pages and the API still answer 200."""
    with console.client() as client:
        response = client.get(path.format(ns="jobs"))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", PATHS)
def test_b24_an_unexpected_error_is_a_problem_or_an_error_page(
    console: Console, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A listing that fails on the broken row answers 500 as problem+json (API) or the error
    page (pages), with no stack trace in it; the error is logged with its traceback."""
    with caplog.at_level(logging.ERROR, "retrysafe.console"), console.client() as client:
        response = client.get(path.format(ns="broken"))
    assert response.status_code == 500
    expected = "application/problem+json" if path.startswith("/api/") else "text/html"
    assert response.headers["content-type"].startswith(expected)
    assert "Traceback" not in response.text
    assert "TypeError" not in response.text
    assert any(r.exc_info for r in caplog.records if r.name == "retrysafe.console")
