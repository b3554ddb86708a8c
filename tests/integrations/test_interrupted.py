"""A view interrupted while it runs, inside Flask: its claim is kept until its lease ends (B40).

Flask's own test client drives the app; the extension sees the interruption in its
`teardown_request`, where an exception's claim is released (B18).
"""

from __future__ import annotations

import pytest
from flask import Flask

from retrysafe import ManualClock, State
from retrysafe.integrations.flask import Idempotency
from retrysafe.stores.memory import MemoryStore
from tests.http.conftest import CALLER, app_records


def _app(store: MemoryStore, raised: type[BaseException], runs: list[int]) -> Flask:
    app = Flask(__name__)
    Idempotency(app, store=store, wait=0)

    @app.post("/charge")
    def charge() -> tuple[str, int]:
        runs.append(1)
        if len(runs) == 1:
            raise raised("the first run ends here")
        return "charged", 201

    return app


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_b40_a_flask_view_interrupted_keeps_its_claim_until_its_lease_ends(
    interrupt: type[BaseException],
) -> None:
    """Ctrl+C or a worker's `SystemExit` in the view: the outcome is unknown, so the claim is
    kept; a retry gets 409 until the lease ends, then runs."""
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    runs: list[int] = []
    client = _app(store, interrupt, runs).test_client()
    headers = {"Idempotency-Key": "k", "Authorization": CALLER}
    with pytest.raises(interrupt):
        client.post("/charge", headers=headers)
    (record,) = app_records(store.list_records())
    assert record.state is State.IN_FLIGHT
    assert client.post("/charge", headers=headers).status_code == 409
    clock.advance(31)  # the lease (30 s) has ended
    assert client.post("/charge", headers=headers).status_code == 201
    assert runs == [1, 1]


def test_b18_a_flask_view_that_raises_releases_its_claim() -> None:
    """An exception Flask does not turn into a response (propagated, as under testing) is the
    view's own answer: the claim is released, and a retry runs at once."""
    store = MemoryStore()
    runs: list[int] = []
    app = _app(store, RuntimeError, runs)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    client = app.test_client()
    headers = {"Idempotency-Key": "k", "Authorization": CALLER}
    with pytest.raises(RuntimeError):
        client.post("/charge", headers=headers)
    assert app_records(store.list_records()) == []
    assert client.post("/charge", headers=headers).status_code == 201
    assert runs == [1, 1]
