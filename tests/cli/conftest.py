"""Fixtures for the CLI: a store on SQLite, PostgreSQL, MySQL or Redis holding known records."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrysafe import Identity, ManualClock, Store, open_store
from retrysafe._http import Settings, encode_outcome
from tests.conftest import fresh_store_url

HTTP_BODY = b'{"id": "pay_1", "amount": 1999}'


@dataclass(frozen=True)
class KnownRecords:
    """A store URL and the records put into it."""

    url: str
    done: Identity  # an HTTP outcome, claimed 10 s ago
    raw: Identity  # a raw outcome (a decorator's), same key as `done`, another scope
    in_flight: Identity  # claimed an hour ago, lease still live
    expired: tuple[Identity, ...]  # past their retention: invisible, purgeable


@pytest.fixture(params=["sqlite", "postgres", "mysql", "redis", "redis-cluster"])
def cli_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty store on each real backend; dropped afterwards."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        if request.param == "sqlite":  # the keys commands never create a SQLite file: make it
            store = open_store(url)
            try:
                store.stats()
            finally:
                store.close()
        yield url


def _claim_at(url: str, when: float) -> Store:
    return open_store(url, clock=ManualClock(when))


@pytest.fixture
def known(cli_store_url: str) -> KnownRecords:
    """The store holding one done HTTP record, one raw one, one in flight, and two expired."""
    now = time.time()
    done = Identity("http", "scope-a", "order-1")
    raw = Identity("functions", "scope-b", "order-1")
    in_flight = Identity("http", "scope-a", "stuck-1")
    expired = (Identity("http", "scope-a", "old-1"), Identity("http", "scope-c", "old-2"))
    outcome = encode_outcome(201, [(b"content-type", b"application/json")], HTTP_BODY, Settings())
    stores = []
    try:
        store = _claim_at(cli_store_url, now - 10)
        stores.append(store)
        claim = store.claim(done, "fp-done", lease=30, retention=3600)
        store.complete(done, claim.token, outcome, retention=3600)
        claim = store.claim(raw, "fp-raw", lease=30, retention=3600)
        store.complete(raw, claim.token, b"[42]", retention=3600)
        store = _claim_at(cli_store_url, now - 3600)
        stores.append(store)
        store.claim(in_flight, "fp-stuck", lease=7200, retention=3600)
        for identity in expired:
            claim = store.claim(identity, "fp-old", lease=30, retention=60)
            store.complete(identity, claim.token, b"old", retention=60)
    finally:
        for store in stores:
            store.close()
    return KnownRecords(cli_store_url, done, raw, in_flight, expired)


@pytest.fixture
def runner() -> CliRunner:
    """Typer's test runner (stdout and stderr kept apart), on a wide terminal."""
    return CliRunner(env={"COLUMNS": "200"})
