"""SPEC B34/B35 in the console: keys that a browser would rewrite in a form (CR, LF, NUL), keys
that no URL nor UTF-8 encoder carries (a lone surrogate, which the stores keep), and outcomes
JSON cannot hold (`inf`, `nan`) are shown, linked and deleted exactly, on SQLite and PostgreSQL,
through a real server and, for the form, a real Chromium."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from retrysafe import Identity, ManualClock, idempotent, open_store
from retrysafe.console import create_app
from retrysafe.observe.events import EventRecorder
from tests.conftest import fresh_store_url
from tests.console.conftest import TOKEN, Console
from tests.console.test_browser import WAIT_MS, browser  # noqa: F401 - the fixture
from tests.servers import AsgiServer

LINE_FEED = Identity("jobs", "t1", "batch\n7")  # stuck: its worker crashed
CRLF = Identity("jobs", "t1", "batch\r\n7")  # live: its request runs now
NUL = Identity("jobs", "t1", "nul\x00key")  # stuck
SURROGATE = Identity("charges", "", "stuck\ud800")  # stuck; as json.loads('"stuck\\ud800"') gives
REPLAYED = "evil\ud800"  # a decorated charge's key, called twice: done, and a replay event


def _strict(text: str) -> object:
    """Parse `text` as standard JSON: `NaN` and `Infinity` are not."""

    def refuse(constant: str) -> object:
        raise AssertionError(f"not standard JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _fill(store_url: str) -> None:
    """Claim the stuck ones two minutes ago with a 5 s lease, the live one now; run the
    decorated functions whose outcomes are `inf` and `nan`, one of them twice."""
    with contextlib.closing(open_store(store_url, clock=ManualClock(time.time() - 120))) as old:
        for identity in (LINE_FEED, NUL, SURROGATE):
            old.claim(identity, "fp", lease=5, retention=3600)
    with contextlib.closing(open_store(store_url)) as store:
        store.claim(CRLF, "fp", lease=600, retention=3600)
        recorder = EventRecorder(store, retention=3600)

        @idempotent(store, key="order_id", namespace="charges", observers=[recorder])
        def charge(order_id: str) -> float:
            return float("inf")

        @idempotent(store, key="k", namespace="ratios")
        def ratio(k: str) -> float:
            return float("nan")

        assert charge(REPLAYED) == charge(REPLAYED) == float("inf")  # the second, a replay
        ratio("r-nan")
        assert recorder.flush(10)
        recorder.close()


@pytest.fixture(params=["sqlite", "postgres"])
def odd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Console]:
    """A console over a store holding the records above."""
    with fresh_store_url(str(request.param), request, tmp_path) as store_url:
        _fill(store_url)
        store = open_store(store_url)
        server = AsgiServer(create_app(store, TOKEN))
        try:
            yield Console(server.url, store_url, keys=())
        finally:
            server.stop()
            store.close()


def _listed(odd: Console, namespace: str) -> dict[str, dict[str, object]]:
    with odd.client() as client:
        answer = client.get("/api/records", params={"namespace": namespace})
    assert answer.status_code == 200, answer.text
    records = _strict(answer.text)["records"]  # type: ignore[index]
    return {record["key"]: record for record in records}


def test_b35_lone_surrogates_and_non_finite_outcomes_are_shown_never_a_500(odd: Console) -> None:
    """Every page and API answer holding a lone-surrogate key or an `inf`/`nan` outcome is 200
    and standard JSON; the keys come back exact; the outcome says `Infinity` and its repr."""
    with odd.client() as client:
        for url in ("/", "/records?namespace=charges", "/records?namespace=ratios"):
            assert client.get(url).status_code == 200, url
        summary = client.get("/api/summary")
        assert summary.status_code == 200, summary.text
        data = _strict(summary.text)
        assert SURROGATE.key in [r["key"] for r in data["stuck"]]  # type: ignore[index]
        events = data["events"]["recent"]  # type: ignore[index]
        assert [(e["decision"], e["key"]) for e in events] == [("replay", REPLAYED)]
        charges = _listed(odd, "charges")
        assert set(charges) == {SURROGATE.key, REPLAYED}
        record = client.get("/api/record", params={"ref": charges[REPLAYED]["ref"]})
        outcome = _strict(record.text)["outcome"]  # type: ignore[index]
        assert (outcome["value"], outcome["repr"]) == ("Infinity", "inf")
        (nan,) = _listed(odd, "ratios").values()
        nan_outcome = _strict(client.get("/api/record", params={"ref": nan["ref"]}).text)
        assert nan_outcome["outcome"]["value"] == "NaN"  # type: ignore[index]
        overview = client.get("/").text
        assert f'href="/record?ref={charges[SURROGATE.key]["ref"]}"' in overview
        page = client.get("/record", params={"ref": charges[SURROGATE.key]["ref"]})
    assert page.status_code == 200
    assert "stuck\\ud800" in page.text  # written as its escape


def test_b35_a_lone_surrogate_key_is_deleted_by_its_ref(odd: Console) -> None:
    """The API deletes the stuck claim whose key holds a lone surrogate, by its ref and
    version, and no other record."""
    stuck = _listed(odd, "charges")[SURROGATE.key]
    with odd.client() as client:
        deleted = client.post(
            "/api/record/delete",
            json={"ref": stuck["ref"], "version": stuck["version"], "confirm": True},
        )
    assert deleted.status_code == 200, deleted.text
    assert _strict(deleted.text)["deleted"] is True  # type: ignore[index]
    assert set(_listed(odd, "charges")) == {REPLAYED}


def test_b35_the_browser_deletes_the_stuck_key_with_a_line_feed_not_its_live_crlf_twin(
    odd: Console,
    browser: Browser,  # noqa: F811 - the fixture imported above
) -> None:
    """In Chromium, deleting the stuck claims whose keys hold LF and NUL, from their links and
    confirmation forms, deletes exactly those: the live claim whose key holds CR LF stays."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    assert page.goto(f"{odd.url}/?token={TOKEN}").status == 200
    for shown in ("batch\\n7", "nul\\x00key"):  # as the listing writes them
        page.goto(f"{odd.url}/records?namespace=jobs&state=stuck")
        page.get_by_role("link", name=shown, exact=True).click()
        page.get_by_role("link", name="Delete this record…").click()
        assert "lease is still live" not in page.locator("main").inner_text()
        page.get_by_role("button", name="Delete this record").click()
        assert f"Deleted record {shown}" in page.locator("main").inner_text()
    context.close()
    with contextlib.closing(open_store(odd.store_url)) as store:
        assert store.get(LINE_FEED) is None
        assert store.get(NUL) is None
        live = store.get(CRLF)
    assert live is not None
    assert live.lease_expires_at > time.time()
