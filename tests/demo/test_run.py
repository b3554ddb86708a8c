"""The demo run: its figures checked against the API's own payments table and the store."""

from __future__ import annotations

from collections import Counter

from rich.console import Console

from retrysafe import State, open_store
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe.demo import DemoDatabase, DemoReport, DemoSettings, RunResult, run_demo
from tests.demo.conftest import DemoStore
from tests.http.conftest import app_records, credential_scope


def test_demo_figures_are_the_api_records(demo_store: DemoStore) -> None:
    """With keys, charges equal intended payments; without, the duplicates reported are rows."""
    progress: list[tuple[bool, int]] = []
    settings = DemoSettings(
        requests=30, loss=0.4, seed=11, store=demo_store.url, table_prefix=demo_store.prefix
    )
    report = run_demo(settings, lambda keys, done: progress.append((keys, done)))

    database = DemoDatabase.for_store_url(demo_store.url, prefix=demo_store.prefix)
    try:
        with_rows = Counter(p.customer for p in database.list_payments(report.with_keys.tenant))
        without_rows = Counter(
            p.customer for p in database.list_payments(report.without_keys.tenant)
        )
    finally:
        database.close()

    assert report.ok
    with_keys, without_keys = report.with_keys, report.without_keys
    assert with_keys.charges == with_keys.intended == 30 == sum(with_rows.values())
    assert len(with_rows) == 30
    assert set(with_rows.values()) == {1}
    assert with_keys.duplicate_charges == 0
    assert with_keys.replays > 0

    assert without_keys.charges == sum(without_rows.values())
    assert without_keys.duplicate_charges == sum(n - 1 for n in without_rows.values()) > 0
    assert without_keys.uncharged == 30 - len(without_rows)
    assert without_keys.lost_responses > 0
    assert without_keys.replays == 0

    store = open_store(demo_store.url)
    try:
        secret = store.get(SECRET_IDENTITY)  # no secret configured: the store keeps one (B8)
        assert secret is not None
        assert secret.outcome is not None
        scope = credential_scope(secret.outcome, f"bearer {with_keys.tenant}")
        keyed = store.list_records(scope=scope, limit=1000)
        unkeyed = credential_scope(secret.outcome, f"bearer {without_keys.tenant}")
        assert store.list_records(scope=unkeyed) == []
        assert len(app_records(store.list_records(limit=1000))) == len(keyed)
    finally:
        store.close()
    assert len(keyed) == 30  # one key per intended payment, shared by its duplicates
    assert {record.state for record in keyed} == {State.DONE}
    assert (True, 30) in progress
    assert (False, 30) in progress


def result(*, keys: bool, duplicates: int) -> RunResult:
    """A pass's figures, for the report's own checks."""
    return RunResult(
        keys=keys,
        tenant="t",
        intended=10,
        charges=10 + duplicates,
        duplicate_charges=duplicates,
        uncharged=0,
        replays=0,
        conflicts=0,
        retries=3,
        lost_responses=3,
        concurrent_duplicates=1,
        seconds=1.0,
    )


def test_report_fails_when_keys_did_not_prevent_a_duplicate() -> None:
    """The demo's verdict (and exit status) is a failure if the pass with keys charged twice."""
    report = DemoReport(
        requests=10,
        loss=0.3,
        seed=1,
        store="s",
        without_keys=result(keys=False, duplicates=4),
        with_keys=result(keys=True, duplicates=1),
    )
    console = Console(record=True, width=100)
    console.print(report.render())
    assert not report.ok
    assert "FAILED" in console.export_text()
    assert report.as_json()["ok"] is False


def test_report_table_shows_both_passes_side_by_side() -> None:
    """The table names every figure, with a column per pass."""
    report = DemoReport(
        requests=10,
        loss=0.3,
        seed=1,
        store="s",
        without_keys=result(keys=False, duplicates=4),
        with_keys=result(keys=True, duplicates=0),
    )
    console = Console(record=True, width=100)
    console.print(report.render())
    text = console.export_text()
    for label in (
        "without keys",
        "with keys",
        "payments intended",
        "charges made",
        "duplicate charges",
        "replays served",
        "409s",
        "retries",
        "time taken",
    ):
        assert label in text
    assert report.ok
    runs = report.as_json()["runs"]
    assert isinstance(runs, dict)
    assert set(runs) == {"without_keys", "with_keys"}
