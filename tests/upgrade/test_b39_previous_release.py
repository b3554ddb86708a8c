"""B39: a record the previous release (0.1.0) wrote is found and honoured by this one.

Each test runs the current code against a copy of a store 0.1.0 filled (`conftest.py`,
`data/fill_010.py`): SQLite, PostgreSQL and Redis. A key 0.1.0 answered replays its answer
and the effect does not run again, though this release fingerprints the request or names
the caller otherwise; a caller 0.1.0 named by a display name is refused as it is now; and no
caller ever gets another's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from retrysafe import KeyMismatchError, idempotent, open_async_store, open_store
from retrysafe._http.wsgi_io import PRINCIPAL_KEY
from retrysafe.asgi import IdempotencyMiddleware, RouteSettings
from retrysafe.wsgi import IdempotencyMiddleware as WSGIMiddleware
from tests.upgrade.data import cases

PREVIOUS, CURRENT = "0.1.0", "current"
ROUTES = {"/json-payments": RouteSettings(fingerprint="json"), "/**": RouteSettings()}
RETRIED = [request for request in cases.REQUESTS if request[0] != "bob"]
ROOT = Path(__file__).resolve().parents[2]


def _send(url: str, requests: list[tuple[Any, ...]], **options: Any) -> tuple[list[Any], list[str]]:
    """Send `requests` (user, credential, path, key, body) through the current ASGI middleware
    on the store at `url`; return each (status, body) and the keys the app ran for."""
    calls: list[str] = []

    async def run() -> list[Any]:
        store = open_async_store(url)
        app = IdempotencyMiddleware(
            cases.payments_app(CURRENT, calls), store=store, routes=ROUTES, required=True, **options
        )
        wrapped = cases.authenticated(app)
        try:
            return [
                await cases.post(wrapped, path, key, body, user=user, credential=credential)
                for user, credential, path, key, body in requests
            ]
        finally:
            await store.aclose()

    return asyncio.run(run()), calls


def test_b39_a_retry_of_a_key_0_1_0_answered_replays_it(previous_store: str) -> None:
    """The claims user (0.1.0: by e-mail), the UUID user and the id-0 user (0.1.0: by their
    credential), the JSON body with 0.10000000000000001 (0.1.0: read as 0.1) and a user named
    alike: each retry gets 0.1.0's answer, twice, and the effect never runs again."""
    answers, calls = _send(previous_store, RETRIED * 2)
    expected = [(201, cases.answer(PREVIOUS, key)) for _, _, _, key, _ in RETRIED]
    assert answers == expected * 2
    assert calls == []


def test_b39_a_user_0_1_0_named_by_display_name_is_refused_as_now(previous_store: str) -> None:
    """A display name is never looked up (two users may share it): refused, nothing runs."""
    bob = next(request for request in cases.REQUESTS if request[0] == "bob")
    [(status, body)], calls = _send(previous_store, [bob])
    assert status == 500
    assert json.loads(body)["type"].endswith("scope-unresolved")
    assert cases.answer(PREVIOUS, "k-display") not in body
    assert calls == []


def test_b39_no_caller_gets_another_callers_0_1_0_record(previous_store: str) -> None:
    """Other callers with 0.1.0's keys run their own request (once), never replay another's;
    the callers 0.1.0 named otherwise run new keys once, under their current names."""
    others = [
        ("mallory", None, "/payments", "k-mapping", b'{"amount": 10}'),
        ("dave", None, "/payments", "k-plain", b'{"amount": 40}'),
        ("dave", None, "/json-payments", "k-float", cases.REQUESTS[3][4]),
        ("carol", None, "/payments", "k-mapping", b'{"amount": 10}'),
        (None, b"Bearer tok-other", "/payments", "k-uuid", b'{"amount": 20}'),
        ("ann", None, "/payments", "k-new", b'{"amount": 60}'),
        ("uuid", b"Bearer tok-uuid", "/payments", "k-new", b'{"amount": 60}'),
    ]
    answers, calls = _send(previous_store, others * 2)
    assert answers == [(201, cases.answer(CURRENT, other[3])) for other in others] * 2
    assert calls == [other[3] for other in others]


def test_b39_a_shared_anonymous_scope_never_finds_a_0_1_0_record(previous_store: str) -> None:
    """With `anonymous="shared"`, a caller with no user and no credential is the shared scope,
    which is never looked up as anyone's former one."""
    request = (None, None, "/payments", "k-uuid", b'{"amount": 20}')
    answers, calls = _send(previous_store, [request], anonymous="shared")
    assert answers == [(201, cases.answer(CURRENT, "k-uuid"))]
    assert calls == ["k-uuid"]


def test_b39_the_wsgi_face_replays_0_1_0_answers(previous_store: str) -> None:
    """The WSGI middleware (the framework faces' base) honours 0.1.0's records alike."""
    store = open_store(previous_store)
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(environ["HTTP_IDEMPOTENCY_KEY"])
        start_response("201 Created", [("Content-Type", "application/json")])
        return [cases.answer(CURRENT, environ["HTTP_IDEMPOTENCY_KEY"])]

    wsgi = WSGIMiddleware(app, store=store, routes=ROUTES, required=True)
    try:
        for user, credential, path, key, body in RETRIED:
            environ = {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": path,
                "CONTENT_TYPE": "application/json",
                "CONTENT_LENGTH": str(len(body)),
                "wsgi.input": io.BytesIO(body),
                "HTTP_IDEMPOTENCY_KEY": key,
                PRINCIPAL_KEY: cases.USERS[user],
            }
            if credential is not None:
                environ["HTTP_AUTHORIZATION"] = credential.decode()
            started: list[str] = []
            answered = b"".join(wsgi(environ, lambda status, _, into=started: into.append(status)))
            assert (started, answered) == (["201 Created"], cases.answer(PREVIOUS, key)), key
    finally:
        store.close()
    assert calls == []


@contextlib.contextmanager
def _charge(
    url: str, namespace: str
) -> Iterator[tuple[Callable[[Any], dict[str, str]], list[object]]]:
    """The current release's decorated `charge` in `namespace`, on the store at `url` (closed
    after), and the orders it ran for."""
    store = open_store(url)
    calls: list[object] = []

    @idempotent(store, key=lambda order: order.id, namespace=namespace)
    def charge(order: Any) -> dict[str, str]:
        calls.append(order)
        return cases.charged(CURRENT, order)

    try:
        yield charge, calls
    finally:
        store.close()


def test_b39_a_decorated_call_with_a_set_of_ints_replays_0_1_0(previous_store: str) -> None:
    """A pydantic model with a set of ints is fingerprinted as 0.1.0 did (its order is the same
    in every process): the retry replays 0.1.0's return value, the function does not run."""
    with _charge(previous_store, cases.NAMESPACE_INTS) as (charge, calls):
        assert charge(cases.int_order()) == cases.charged(PREVIOUS, cases.int_order())
    assert calls == []


_RETRY_STRS = """
import json, sys
from retrysafe import idempotent, open_store
from tests.upgrade.data import cases
store = open_store(sys.argv[1])
calls = []
@idempotent(store, key=lambda order: order.id, namespace=cases.NAMESPACE_STRS)
def charge(order):
    calls.append(1)
    return cases.charged("current", order)
print(json.dumps([charge(cases.str_order()), len(calls)]))
store.close()
"""


def test_b39_a_decorated_call_with_a_set_of_strs_replays_0_1_0(previous_store: str) -> None:
    """A set of strs iterates in an order the process's hash seed decides, so 0.1.0's
    fingerprint of it held only where the seed did: under 0.1.0's seed, the retry replays
    0.1.0's value (its form accepted beside the current, order-free one); under any other,
    it never runs the function again (replay, or a mismatch)."""
    environment = {**os.environ, "PYTHONHASHSEED": cases.HASH_SEED}
    done = subprocess.run(
        [sys.executable, "-c", _RETRY_STRS, previous_store],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [cases.charged(PREVIOUS, cases.str_order()), 0]

    with _charge(previous_store, cases.NAMESPACE_STRS) as (charge, calls):
        try:
            replayed = charge(cases.str_order())
        except KeyMismatchError:
            pass
        else:
            assert replayed == cases.charged(PREVIOUS, cases.str_order())
    assert calls == []
