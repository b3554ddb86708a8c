"""SPEC B36 for the console's server (the protocol it shares with `retrysafe proxy`): a
request answered before its body was read (a 401, a 404) has its connection closed within
the head timeout of the answer, however the client trickles the rest of the body in."""

from __future__ import annotations

import socket
import time

import pytest

from tests.console.conftest import TOKEN
from tests.console.test_limits import HEAD_TIMEOUT, WAIT, console

__all__ = ["console"]


@pytest.mark.parametrize(
    ("path", "token", "status"),
    [("/api/purge", "", b"401"), ("/api/nowhere", f"Bearer {TOKEN}", b"404")],
    ids=["no-token", "no-such-path"],
)
def test_b36_a_body_left_unread_after_the_answer_does_not_hold_the_connection(
    console: int, path: str, token: str, status: bytes
) -> None:
    """The console's answer before a declared 300 MB body was read (a 401, a 404), then a
    byte of that body every 0.1 s: the connection is closed within the head timeout of the
    answer (where each byte kept it open for ever)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 300000000\r\n\r\n{"
    ).encode()
    with socket.create_connection(("127.0.0.1", console), timeout=WAIT) as conn:
        conn.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer
        answered = time.monotonic()
        assert _closed_while_trickling(conn)
        assert time.monotonic() - answered < HEAD_TIMEOUT + 3


def _closed_while_trickling(conn: socket.socket) -> bool:
    """Send a byte every 0.1 s; whether the server closes `conn` within WAIT."""
    conn.settimeout(0.1)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            if not conn.recv(65536):
                return True
        except TimeoutError:
            pass
        except OSError:
            return True
        try:
            conn.sendall(b" ")
        except OSError:
            return True
    return False
