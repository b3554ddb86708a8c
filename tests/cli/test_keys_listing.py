"""`keys list`: the heading counts every matching record, not only the rows shown, and each
row fits the terminal (hashed scopes shortened, the least needed columns left out)."""

from __future__ import annotations

import secrets
import time
import uuid

import pytest
from typer.testing import CliRunner

from retrysafe import Identity, ManualClock, open_store
from retrysafe._flow import SyncFlow
from retrysafe._flow.secret import load_secret
from retrysafe._http import Settings, encode_outcome
from retrysafe.cli import app
from retrysafe.cli._scopes import short_scope

HTTP_SCOPES = ["c:" + secrets.token_hex(32) for _ in range(3)]
JOBS_SCOPE = "p:" + secrets.token_hex(32)
LONG_KEY = "k" * 120


def hashed_records(url: str) -> tuple[list[Identity], list[Identity]]:
    """Store the scope secret (hidden, never counted), then 15 HTTP records (3 in flight, the
    newest) and 3 older ones in namespace `jobs`; return the (http, jobs) identities."""
    store = open_store(url)
    try:
        load_secret(SyncFlow(store))  # as the middleware does, in a store still empty
    finally:
        store.close()
    now = time.time()
    http = [Identity("http", HTTP_SCOPES[i % 3], str(uuid.uuid4())) for i in range(15)]
    jobs = [Identity("jobs", JOBS_SCOPE, str(uuid.uuid4())) for _ in range(3)]
    outcome = encode_outcome(201, [], b'{"id": "pay_1"}', Settings())
    for identities, age in ((jobs, 600), (http[3:], 60), (http[:3], 30)):
        store = open_store(url, clock=ManualClock(now - age))
        try:
            for identity in identities:
                claim = store.claim(identity, "fp", lease=3600, retention=86400)
                if identity not in http[:3]:
                    store.complete(identity, claim.token, outcome, retention=86400)
        finally:
            store.close()
    return http, jobs


def heading(runner: CliRunner, url: str, *args: str) -> str:
    """The first line `keys list ARGS` prints."""
    result = runner.invoke(app, ["keys", "list", "--store", url, *args])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[0]


def test_list_heading_counts_every_match(runner: CliRunner, cli_store_url: str) -> None:
    """With and without filters, the heading gives the total of matching records (the scope
    secret left out) and how many of them are shown."""
    hashed_records(cli_store_url)
    shown = "are shown (--limit for more)"
    cases = {
        ("--limit", "5"): f"18 records match; the newest 5, all in namespace 'http', {shown}",
        ("--state", "in_flight", "--limit", "2"): (
            f"3 records match; the newest 2, all in namespace 'http', {shown}"
        ),
        ("--state", "done", "--limit", "1"): (
            f"15 records match; the newest 1, all in namespace 'http', {shown}"
        ),
        ("--namespace", "jobs", "--limit", "2"): (
            f"3 records match; the newest 2, all in namespace 'jobs', {shown}"
        ),
        ("--older-than", "5m", "--limit", "1"): (
            f"3 records match; the newest 1, all in namespace 'jobs', {shown}"
        ),
        ("--scope", short_scope(HTTP_SCOPES[0]), "--limit", "1"): (
            f"5 records match; the newest 1, all in namespace 'http', {shown}"
        ),
        ("--limit", "18"): "18 records",
        ("--namespace", "jobs"): "3 records in namespace 'jobs'",
    }
    for args, expected in cases.items():
        assert heading(runner, cli_store_url, *args) == expected, args


@pytest.mark.parametrize("cli_store_url", ["sqlite"], indirect=True)
def test_list_rows_fit_80_columns(cli_store_url: str) -> None:
    """At 80 columns each record is one line of at most 80 characters, with its shortened
    scope, its whole key and its state; a wide terminal shows every column."""
    http, jobs = hashed_records(cli_store_url)
    narrow = CliRunner(env={"COLUMNS": "80"}).invoke(
        app, ["keys", "list", "--store", cli_store_url]
    )
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.stdout.splitlines()
    assert max(map(len, lines)) <= 80, narrow.stdout
    for identity in http + jobs:
        (row,) = [line for line in lines if identity.key in line]
        assert short_scope(identity.scope) in row
        assert identity.scope not in row
        assert ("in flight" if identity in http[:3] else "done") in row
    wide = CliRunner(env={"COLUMNS": "160"}).invoke(app, ["keys", "list", "--store", cli_store_url])
    header = wide.stdout.splitlines()[1].split()
    assert header == [
        "namespace",
        "scope",
        "key",
        "state",
        "age",
        "expires",
        "in",
        "lease",
        "owner",
        "size",
    ]


@pytest.mark.parametrize("cli_store_url", ["sqlite"], indirect=True)
def test_list_wraps_a_key_too_long_for_the_terminal_and_nothing_else(cli_store_url: str) -> None:
    """A key longer than the terminal is wide wraps within its column, whole; no line passes
    80 characters."""
    store = open_store(cli_store_url)
    try:
        store.claim(Identity("http", HTTP_SCOPES[0], LONG_KEY), "fp", lease=60, retention=60)
    finally:
        store.close()
    result = CliRunner(env={"COLUMNS": "80"}).invoke(
        app, ["keys", "list", "--store", cli_store_url]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    pieces = [line.split()[1] if line.startswith("c:") else line.split()[0] for line in lines[3:]]
    assert "".join(pieces) == LONG_KEY
