"""B19, B40: an outcome held in the Flask extension or Django's middleware when the process
exits is stored on the way out (the holder's thread is a daemon: without a drain at exit it
would die with the outcome), or logged as `held_lost` when the store stays away.

A real process: it serves one keyed request on a throwaway Redis that the view stops (SIGSTOP),
so storing the outcome fails and the outcome is held; the process then ends at once. The test
lets Redis go on (SIGCONT) after the process said it holds the outcome, and finds the key done.

Python 3.12 refuses to start a thread once the interpreter is exiting (`RuntimeError: can't
create new thread at interpreter shutdown`), 3.11 and 3.13 do not: these tests run on each in CI
(`make test-pythons`), and the "refuse" face makes any of them refuse as 3.12 does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrysafe import State, open_store
from tests.conftest import service_missing

_SECONDS = 30.0

_CHILD = textwrap.dedent(
    """
    import logging, os, signal, sys
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    face, store_url, redis_pid, drain = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    refuse = face == "refuse"  # the flask face, on an interpreter that refuses threads at exit
    face = "flask" if refuse else face

    def stop_the_store():
        os.kill(redis_pid, signal.SIGSTOP)  # storing the outcome now fails: it is held

    if face == "flask":
        import flask
        from retrysafe.integrations.flask import Idempotency, idempotency
        app = flask.Flask("held")

        @app.post("/orders")
        @idempotency(required=True)
        def orders():
            stop_the_store()
            return {"ok": True}, 201

        from retrysafe import open_store
        state = Idempotency(store=open_store(store_url), anonymous="shared").init_app(app)
        state.flow.drain_timeout = float(drain)
        answer = app.test_client().post("/orders", json={}, headers={"Idempotency-Key": "k"})
        held = len(state.flow.holdings)
    else:
        import django
        from django.conf import settings
        from django.http import JsonResponse
        from django.urls import path
        settings.configure(
            DEBUG=False, SECRET_KEY="x" * 50, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
            INSTALLED_APPS=[], USE_TZ=True,
            MIDDLEWARE=["retrysafe.integrations.django.IdempotencyMiddleware"],
            RETRYSAFE={"STORE": store_url, "ANONYMOUS": "shared"},
        )
        django.setup()
        from retrysafe.integrations.django import idempotency

        @idempotency(required=True)
        def orders(request):
            stop_the_store()
            return JsonResponse({"ok": True}, status=201)

        urlpatterns = [path("orders", orders)]
        from django.test import Client
        answer = Client().post(
            "/orders", "{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k"
        )
        from retrysafe._flow.exiting import HOLDERS
        held = sum(len(flow.holdings) for flow in HOLDERS)
        for flow in HOLDERS:
            flow.drain_timeout = float(drain)
    if refuse:
        import atexit, threading

        def no_thread(*args, **kwargs):
            raise RuntimeError("can't create new thread at interpreter shutdown")

        def forbid_threads():  # runs before retrysafe's drain: atexit calls the last first
            for name in ("_start_new_thread", "_start_joinable_thread"):  # 3.11-3.12, 3.13
                if hasattr(threading, name):
                    setattr(threading, name, no_thread)

        atexit.register(forbid_threads)
    print("answered", answer.status_code, "held", held, flush=True)
    sys.stdin.readline()  # the test says when to end
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A throwaway redis-server of this test's own, which the test may stop and resume."""
    binary = shutil.which("redis-server")
    if binary is None:  # fails under CI=true: this must run on each Python version there
        service_missing("redis-server", "no local 'redis-server' binary to start Redis from")
    port = _free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp_path],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + _SECONDS
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not listen"
            assert server.poll() is None, "redis-server exited"
            time.sleep(0.05)
    try:
        yield server, f"redis://127.0.0.1:{port}/0?socket_timeout=0.5&prefix=held"
    finally:
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait(_SECONDS)


def _run_child(
    face: str, redis: subprocess.Popen[bytes], url: str, drain: float, resume: bool
) -> str:
    """Run the process until it holds the outcome, end it, resume Redis if `resume`; return
    what it logged."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, face, url, str(redis.pid), str(drain)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RETRYSAFE_SCOPE_SECRET": "s" * 32},
    )
    assert child.stdout is not None
    assert child.stdin is not None
    said = child.stdout.readline()
    try:
        assert said.split() == ["answered", "201", "held", "1"], said
        child.stdin.close()  # the process ends now, the outcome still held
        time.sleep(0.5)
        if resume:
            redis.send_signal(signal.SIGCONT)
        assert child.stderr is not None
        logged = child.stderr.read()  # to its end: the process has exited
        child.wait(_SECONDS)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(_SECONDS)
        redis.send_signal(signal.SIGCONT)
        for stream in (child.stdin, child.stdout, child.stderr):
            stream.close()
    return logged


def _state(url: str) -> State | None:
    store = open_store(url)
    try:
        records = store.list_records(limit=10)
        return next((r.state for r in records if r.identity.key == "k"), None)
    finally:
        store.close()


@pytest.mark.parametrize("face", ["flask", "django", "refuse"])
def test_b19_an_outcome_held_at_exit_is_stored_before_the_process_ends(
    face: str, redis_server: tuple[subprocess.Popen[bytes], str]
) -> None:
    """The process ends while its outcome is held; the store comes back within the drain: the
    key is done, so a retry replays it instead of running the view again."""
    redis, url = redis_server
    logged = _run_child(face, redis, url, drain=10, resume=True)
    assert _state(url) is State.DONE, logged
    assert "never stored" not in logged


@pytest.mark.parametrize("face", ["flask", "django"])
def test_b19_an_outcome_still_held_after_the_exit_drain_is_logged_lost(
    face: str, redis_server: tuple[subprocess.Popen[bytes], str]
) -> None:
    """The store stays away for the whole drain: the outcome is logged as never stored."""
    redis, url = redis_server
    logged = _run_child(face, redis, url, drain=1, resume=False)
    assert "was never stored" in logged, logged
    assert _state(url) is State.IN_FLIGHT
