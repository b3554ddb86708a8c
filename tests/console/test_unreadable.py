"""SPEC B35 in the console over an encrypted store: a record whose outcome does not open with
the store's keys is counted, listed, shown as unreadable (never its bytes) and deleted by the
version its confirmation read, and the other records are served as before."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrysafe import Identity, open_store
from retrysafe.console import create_app
from retrysafe.console._refs import identity_ref
from retrysafe.stores.encrypted import Keyring
from tests.conftest import fresh_store_url
from tests.console.conftest import TOKEN, Console
from tests.servers import AsgiServer

OLD, NEW = Keyring.generate_key(), Keyring.generate_key()
LOST = Identity("jobs", "worker-1", "lost")
FINE = Identity("jobs", "worker-1", "fine")
BODY = b"card 4242-console-unreadable"


@pytest.fixture(params=["sqlite", "postgres"])
def console(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Console]:
    """The console over a store opened with NEW, holding LOST (sealed with OLD, dropped) and
    FINE (sealed with NEW)."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        for key, identity, body in ((OLD, LOST, BODY), (NEW, FINE, b"fine")):
            with contextlib.closing(open_store(url, encryption=Keyring([key]))) as writer:
                claim = writer.claim(identity, "fp", lease=30, retention=3600)
                writer.complete(identity, claim.token, body, retention=3600)
        store = open_store(url, encryption=Keyring([NEW]))
        server = AsgiServer(create_app(store, TOKEN))
        try:
            yield Console(server.url, url, ())
        finally:
            server.stop()
            store.close()


def test_b35_the_overview_and_the_listing_go_on_past_a_record_that_does_not_open(
    console: Console,
) -> None:
    """/api/summary counts both records and /api/records lists both, the one that does not
    open marked; the namespace page says so."""
    with console.client() as client:
        summary = client.get("/api/summary")
        assert summary.status_code == 200, summary.text
        (jobs,) = summary.json()["namespaces"]
        assert (jobs["namespace"], jobs["done"]) == ("jobs", 2)
        listed = client.get("/api/records", params={"namespace": "jobs"})
        assert listed.status_code == 200, listed.text
        marked = {r["key"]: r["outcome_unreadable"] for r in listed.json()["records"]}
        assert marked == {"lost": True, "fine": False}
        page = client.get("/records", params={"namespace": "jobs"})
        assert page.status_code == 200, page.text
        assert "done, outcome unreadable" in page.text


def test_b35_a_record_that_does_not_open_is_shown_as_such_and_deleted_by_its_version(
    console: Console,
) -> None:
    """/api/record gives its outcome as unreadable with the dropped key's id, never its bytes;
    a delete of another version is refused (409), of the version read it deletes."""
    with console.client() as client:
        read = client.get("/api/record", params={"ref": identity_ref(LOST)})
        assert read.status_code == 200, read.text
        record = read.json()
        outcome = record["outcome"]
        assert (outcome["kind"], outcome["key_id"]) == ("unreadable", Keyring([OLD]).key_ids[0])
        page = client.get("/record", params={"ref": identity_ref(LOST)})
        assert page.status_code == 200, page.text
        for text in (read.text, page.text):
            assert BODY.decode() not in text
        stale = {"ref": record["ref"], "version": "0" * 16, "confirm": True}
        assert client.post("/api/record/delete", json=stale).status_code == 409
        confirmed = {"ref": record["ref"], "version": record["version"], "confirm": True}
        deleted = client.post("/api/record/delete", json=confirmed)
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["deleted"] is True
        gone = client.get("/api/record", params={"ref": identity_ref(LOST)})
        assert gone.status_code == 404
        fine = client.get("/api/record", params={"ref": identity_ref(FINE)}).json()
        assert fine["outcome"] == {"kind": "raw", "text": "fine"}
