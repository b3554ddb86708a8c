"""The Flask extension bounds a keyed body that comes without a Content-Length (B22).

A chunked upload carries no Content-Length, so the limit can only be enforced while reading:
the extension must stop one byte past `max_body_size` and answer 413, never read (and keep in
memory) the whole body first. The app is driven by Flask's own test client, its request body
a stream that counts what was read from it, as a server that terminates chunked input
(`wsgi.input_terminated`, gunicorn) hands it to the app.
"""

from __future__ import annotations

import io

from flask import Flask, request

from retrysafe import open_store
from retrysafe.integrations.flask import Idempotency, idempotency

SECRET = "flask-chunked-tests-scope-secret-01"
LIMIT = 64 * 1024
CHUNKED = {"Transfer-Encoding": "chunked"}


class _Upload(io.RawIOBase):
    """`size` bytes of upload, produced as they are read; `taken` counts them."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.taken = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = b"x" * count
        self.left -= count
        self.taken += count
        return count


def _app(tmp_path: object, charges: list[int]) -> Flask:
    app = Flask(__name__)
    store = open_store(f"sqlite:///{tmp_path}/idem.db")
    Idempotency(app, store=store, scope_secret=SECRET, anonymous="shared", max_body_size=LIMIT)

    @app.post("/uploads")
    @idempotency(required=True)
    def upload() -> tuple[dict[str, int], int]:
        charges.append(len(request.get_data()))
        return {"size": charges[-1]}, 201

    return app


def _post(app: Flask, key: str, body: _Upload) -> tuple[int, str]:
    response = app.test_client().post(
        "/uploads",
        headers={"Idempotency-Key": key, **CHUNKED},
        environ_overrides={
            "wsgi.input": io.BufferedReader(body),
            "wsgi.input_terminated": True,
            "CONTENT_LENGTH": "",
        },
    )
    return response.status_code, (response.get_json() or {}).get("type", "")


def test_b22_a_chunked_body_over_the_limit_is_refused_after_the_limit_is_read(
    tmp_path: object,
) -> None:
    """16 MiB chunked against a 64 KiB limit: 413 body-too-large, the view did not run, and
    no more than the limit and one read past it came off the stream."""
    charges: list[int] = []
    body = _Upload(16 * 1024 * 1024)
    status, kind = _post(_app(tmp_path, charges), "big-1", body)
    assert status == 413
    assert kind.endswith("#body-too-large")
    assert charges == []
    assert body.taken <= 2 * LIMIT, body.taken


def test_b22_a_chunked_body_within_the_limit_runs_and_replays(tmp_path: object) -> None:
    """A chunked body of exactly the limit is read whole, runs once and replays."""
    charges: list[int] = []
    app = _app(tmp_path, charges)
    assert _post(app, "ok-1", _Upload(LIMIT))[0] == 201
    assert _post(app, "ok-1", _Upload(LIMIT))[0] == 201
    assert charges == [LIMIT]
