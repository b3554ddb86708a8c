"""The Flask extension fingerprints a form body that an earlier hook parsed (B12, B13).

A hook registered before `Idempotency` (a CSRF check, as the docs ask of refusing hooks) reads
`request.form`; werkzeug's parser consumes the request stream, so the extension must keep the
raw body first. Each app is driven by Flask's own test client.
"""

from __future__ import annotations

import io
from typing import Any

from flask import Flask, abort, request

from retrysafe.integrations.flask import Idempotency, idempotency
from retrysafe.stores.memory import MemoryStore

SECRET = "flask-form-tests-scope-secret-0123"
KEY = {"Idempotency-Key": "k-1"}


def _app(charges: list[str], *, late_parser: bool = False) -> Flask:
    """An app whose CSRF hook reads the form before the extension's hooks; with
    `late_parser`, a URL value preprocessor parses it even before the extension's first hook."""
    app = Flask(__name__)

    @app.before_request
    def csrf_check() -> None:
        if request.method == "POST" and request.form.get("csrf_token") != "ok":
            abort(403)

    if late_parser:

        @app.url_value_preprocessor
        def parse_early(endpoint: str | None, values: dict[str, Any] | None) -> None:
            request.form.get("amount")

    Idempotency(app, store=MemoryStore(), scope_secret=SECRET, anonymous="shared", wait=0)

    @app.post("/payments")
    @idempotency(required=True)
    def pay() -> tuple[dict[str, object], int]:
        upload = request.files.get("receipt")
        charges.append(request.form["amount"])
        size = 0 if upload is None else len(upload.read())
        return {"charged": request.form["amount"], "receipt": size}, 201

    return app


def test_b13_a_form_parsed_by_an_earlier_hook_is_still_fingerprinted() -> None:
    """Same key, another urlencoded form, after a CSRF hook read it: 422, the view ran once
    and saw its form."""
    charges: list[str] = []
    client = _app(charges).test_client()
    first = client.post("/payments", data={"csrf_token": "ok", "amount": "10"}, headers=KEY)
    assert first.status_code == 201
    assert first.get_json() == {"charged": "10", "receipt": 0}
    other = client.post("/payments", data={"csrf_token": "ok", "amount": "999"}, headers=KEY)
    assert other.status_code == 422
    assert other.content_type == "application/problem+json"
    assert other.get_json()["type"].endswith("#key-mismatch")
    replay = client.post("/payments", data={"csrf_token": "ok", "amount": "10"}, headers=KEY)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert charges == ["10"]


def test_b12_a_multipart_upload_parsed_by_an_earlier_hook_is_fingerprinted() -> None:
    """A multipart form with a file: the view still gets the file after the body was kept,
    and another file under the same key is a mismatch."""
    charges: list[str] = []
    client = _app(charges).test_client()

    def upload(content: bytes) -> Any:
        data = {"csrf_token": "ok", "amount": "5", "receipt": (io.BytesIO(content), "r.txt")}
        return client.post("/payments", data=data, headers=KEY, content_type="multipart/form-data")

    first = upload(b"x" * 1000)
    assert first.status_code == 201
    assert first.get_json() == {"charged": "5", "receipt": 1000}
    assert upload(b"y" * 1000).status_code == 422
    assert charges == ["5"]


def test_b24_a_body_consumed_before_the_extension_is_a_problem() -> None:
    """A form parsed before even the extension's first hook (a URL value preprocessor): the
    body is gone, so the request is refused with a problem, not run with an empty fingerprint."""
    charges: list[str] = []
    client = _app(charges, late_parser=True).test_client()
    response = client.post("/payments", data={"csrf_token": "ok", "amount": "10"}, headers=KEY)
    assert response.status_code == 500
    assert response.content_type == "application/problem+json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_json()["type"].endswith("#body-unavailable")
    assert charges == []
