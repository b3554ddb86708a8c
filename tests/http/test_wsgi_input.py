"""WSGI: a request body that ends before its Content-Length (the client left mid-upload) is
refused with the 400 `body-incomplete` problem; the app never runs on the part that came
(B22, B24). Real wsgiref on loopback, a raw client socket; the app counts its runs."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest

import retrysafe
from retrysafe.wsgi import IdempotencyMiddleware
from tests.http.conftest import CALLER
from tests.integrations.servers import WsgiServer

BODY = b"amount=1000&to=acct_merchant_1234567"


@pytest.fixture
def served() -> Iterator[tuple[WsgiServer, list[bytes]]]:
    """A payments app that records each body it ran on, behind the WSGI middleware."""
    ran: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        ran.append(body)
        start_response("201 Created", [("Content-Type", "application/json")])
        return [json.dumps({"charged": body.decode()}).encode()]

    store = retrysafe.open_store("memory://")
    server = WsgiServer(IdempotencyMiddleware(app, store=store))
    yield server, ran
    server.stop()


def send_part(url: str, key: str, part: bytes) -> bytes:
    """POST `BODY`'s length but only `part` of it, end the upload, return what comes back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /pay HTTP/1.1\r\nHost: x\r\nAuthorization: {CALLER}\r\n"
            f'Idempotency-Key: "{key}"\r\nContent-Length: {len(BODY)}\r\n'
            "Content-Type: application/x-www-form-urlencoded\r\n\r\n".encode()
            + part
        )
        sock.shutdown(socket.SHUT_WR)  # no more comes: the server reads to the end of it
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_b22_a_body_shorter_than_its_content_length_runs_nothing_and_stores_nothing(
    served: tuple[WsgiServer, list[bytes]],
) -> None:
    """The cut upload gets the 400 problem and the app never sees it; the retry with the whole
    body then runs once (it got a 422 mismatch when the part had been run and stored)."""
    server, ran = served
    head, _, body = send_part(server.url, "k1", BODY[:9]).partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines)
    assert status.split()[1] == "400"
    assert fields["content-type"] == "application/problem+json"
    assert fields["cache-control"] == "no-store"
    problem = json.loads(body)
    assert problem["type"].endswith("#body-incomplete")
    assert problem["status"] == 400
    assert "after 9 of the 36 bytes" in problem["detail"]
    assert ran == []
    headers = {"Authorization": CALLER, "Idempotency-Key": '"k1"'}
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    with httpx.Client(base_url=server.url, timeout=10) as client:
        whole = client.post("/pay", content=BODY, headers=headers)
        again = client.post("/pay", content=BODY, headers=headers)
    assert whole.status_code == 201
    assert whole.json() == {"charged": BODY.decode()}
    assert again.headers["idempotent-replayed"] == "true"
    assert ran == [BODY]
