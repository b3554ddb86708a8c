"""SPEC B16/B17 through the console: a delete removes the record its confirmation showed, never
the claim a retry took over since, so the effect cannot run a second time beside that retry."""

from __future__ import annotations

import contextlib
import re

from retrysafe import open_store
from tests.console.conftest import STUCK, Console

STUCK_ID = {"namespace": STUCK.namespace, "scope": STUCK.scope, "key": STUCK.key}


def _take_over(console: Console) -> str:
    """A client's retry takes the stuck claim over (its lease ended long ago) and is still
    running: return its fencing token."""
    with contextlib.closing(open_store(console.store_url)) as store:
        claim = store.claim(STUCK, "fp-stuck", lease=600, retention=3600)
    assert claim.acquired
    assert claim.taken_over
    return claim.token


def _holder(console: Console) -> str | None:
    """The fencing token of the record's holder now, or None once it is gone."""
    with contextlib.closing(open_store(console.store_url)) as store:
        record = store.get(STUCK)
    return None if record is None else record.token


def _hidden(page: str, name: str) -> str:
    """The value of the confirmation form's hidden field `name`."""
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, page
    return found[1]


def test_b17_an_api_delete_of_the_stuck_claim_spares_the_retry_that_took_it_over(
    console: Console,
) -> None:
    """The operator reads the stuck claim; a retry takes it over and runs; the delete of the
    version read answers 409 problem+json, and the retry's live claim stays its own."""
    with console.client() as client:
        read = client.get("/api/record", params=STUCK_ID).json()
        assert (read["stuck"], read["lease_live"]) == (True, False)
        retry = _take_over(console)
        refused = client.post(
            "/api/record/delete",
            json={"ref": read["ref"], "version": read["version"], "confirm": True},
        )
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert "changed" in refused.json()["detail"]
        now = client.get("/api/record", params=STUCK_ID).json()
    assert (now["lease_live"], now["stuck"]) == (True, False)
    assert now["version"] != read["version"]
    assert _holder(console) == retry


def test_b17_a_confirmed_form_shows_the_confirmation_again_when_the_record_changed(
    console: Console,
) -> None:
    """A confirmation page opened for the stuck claim, posted after a retry took it over,
    deletes nothing: the answer is the confirmation again (409), for the retry's claim, with
    the live-lease warning; confirming that one deletes it."""
    with console.client() as client:
        page = client.get("/record/delete", params=STUCK_ID).text
        assert "lease is still live" not in page  # a stuck claim: no warning
        form = {"ref": _hidden(page, "ref"), "version": _hidden(page, "version"), "confirm": "yes"}
        retry = _take_over(console)
        again = client.post("/record/delete", data=form)
        assert again.status_code == 409, again.text
        assert "Nothing was deleted: this record changed" in again.text
        assert "lease is still live" in again.text
        assert _holder(console) == retry
        confirmed = {**form, "version": _hidden(again.text, "version")}
        done = client.post("/record/delete", data=confirmed)
    assert done.status_code == 200, done.text
    assert "Deleted record" in done.text
    assert _holder(console) is None


def test_b17_a_delete_confirmed_in_flight_refuses_the_record_once_it_is_done(
    console: Console,
) -> None:
    """The stuck claim's own request finishes after its confirmation was read (same fencing
    token, now done): the delete of the in-flight version deletes nothing."""
    with console.client() as client:
        read = client.get("/api/record", params=STUCK_ID).json()
        with contextlib.closing(open_store(console.store_url)) as store:
            held = store.get(STUCK)
            assert held is not None
            store.complete(STUCK, held.token, b"done late", retention=3600)
        refused = client.post(
            "/api/record/delete", json={**STUCK_ID, "version": read["version"], "confirm": True}
        )
        assert refused.status_code == 409, refused.text
        assert client.get("/api/record", params=STUCK_ID).json()["state"] == "done"


def test_b17_an_api_delete_without_the_version_is_refused(console: Console) -> None:
    """A delete that does not say which version it confirmed is a 400 and deletes nothing."""
    with console.client() as client:
        refused = client.post("/api/record/delete", json={**STUCK_ID, "confirm": True})
        assert refused.status_code == 400, refused.text
        assert '"version"' in refused.json()["detail"]
    assert _holder(console) is not None


def test_b17_a_page_link_and_the_api_name_the_record_by_its_ref(console: Console) -> None:
    """The listing's links carry the record's ref, which the pages and the API take."""
    with console.client() as client:
        listed = client.get("/api/records", params={"namespace": STUCK.namespace}).json()
        (stuck,) = [r for r in listed["records"] if r["key"] == STUCK.key]
        page = client.get("/records", params={"namespace": STUCK.namespace}).text
        assert f"/record?ref={stuck['ref']}" in page
        by_ref = client.get("/api/record", params={"ref": stuck["ref"]}).json()
        assert (by_ref["namespace"], by_ref["scope"], by_ref["key"]) == tuple(STUCK_ID.values())
        assert client.get("/api/record", params={"ref": "not.a.ref!"}).status_code == 400
