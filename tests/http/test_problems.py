"""Every error is RFC 9457 problem+json linking to the published policy: B24, B25."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from retrysafe._http import (
    DEFAULT_PROBLEM_BASE_URL,
    PROBLEMS,
    RouteSettings,
    Settings,
    problem_type,
)
from tests.http.conftest import Service

Serve = Callable[..., Service]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "http.md"
SITE = "https://retrysafe.readthedocs.io/en/latest/"
"""Where the docs are published: a page's address is this and its file's name."""
POLICY_ANCHORS = [
    "key-format",
    "scope",
    "fingerprint",
    "outcome-policy",
    "expiry",
    "large-responses",
]


def _check_problem(response: httpx.Response, base: str) -> str:
    """Assert `response` is a well-formed problem; return its slug."""
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert set(data) == {"type", "title", "status", "detail"}
    assert data["status"] == response.status_code
    assert data["type"].startswith(base)
    slug = data["type"].removeprefix(base)
    assert slug in PROBLEMS
    assert data["title"] == PROBLEMS[slug][1]
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    return str(slug)


def test_b24_every_problem_the_middleware_answers_is_problem_json(serve: Serve) -> None:
    """Each problem type, produced over HTTP, has type, title, status, detail and no-store."""
    base = "https://docs.example/idempotency#"
    service = serve(
        problem_base_url=base,
        wait=0,
        max_in_flight_per_scope=1,
        routes={
            "/payments": RouteSettings(required=True),
            "/echo": RouteSettings(max_body_size=10, max_response_size=5),
        },
    )
    seen = set()
    seen.add(_check_problem(service.post("/payments", json={}), base))  # key-required
    seen.add(_check_problem(service.post("/payments", '"bad', json={}), base))  # invalid-key
    nobody = service.post("/payments", "n", json={}, anonymous=True)
    seen.add(_check_problem(nobody, base))  # scope-missing
    service.post("/payments", "k", json={"a": 1})
    seen.add(_check_problem(service.post("/payments", "k", json={"a": 2}), base))  # mismatch
    seen.add(_check_problem(service.post("/echo", "big", content=b"x" * 11), base))  # 413
    service.post("/echo", "e", content=b"x")
    seen.add(_check_problem(service.post("/echo", "e", content=b"x"), base))  # not stored
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(service.post, "/gate", "g")
        assert service.recorder.entered.wait(10)
        seen.add(_check_problem(service.post("/gate", "g"), base))  # in flight
        seen.add(_check_problem(service.post("/gate", "other"), base))  # too many
        service.recorder.gate.set()
        running.result(10)
    # body-incomplete: a client that sends less than its Content-Length (test_wsgi_input.py);
    # body-unavailable: only the integrations inside a framework (test_flask_form_body.py);
    # transaction-aborted: transactional mode's (tests/transactions/test_aborted_web.py)
    # scope-unresolved: a caller that cannot be named (tests/http/test_scope_names.py)
    left = {
        "scope-unresolved",
        "store-unavailable",
        "outcome-unreadable",
        "body-incomplete",
        "body-unavailable",
        "transaction-aborted",
    }
    assert seen == set(PROBLEMS) - left


def test_b24_unreadable_outcome_is_a_problem_without_the_stored_bytes(serve: Serve) -> None:
    """A record whose outcome is not an HTTP response gets the 500 problem, not its bytes."""
    service = serve()
    service.post("/status/201", "k")
    (record,) = service.records()
    identity = record.identity
    service.store_call("delete", identity)
    claim = service.store_call("claim", identity, record.fingerprint, lease=30, retention=60)
    service.store_call("complete", identity, claim.token, b"secret-bytes", retention=60)
    response = service.post("/status/201", "k")
    assert response.status_code == 500
    assert _check_problem(response, DEFAULT_PROBLEM_BASE_URL) == "outcome-unreadable"
    assert "secret" not in response.text


def test_b24_store_unavailable_is_a_problem(serve: Serve) -> None:
    """The 503 of an unreachable store is a problem with Retry-After."""
    service = serve(store_url="redis://127.0.0.1:1/0?prefix=rs_dead&connect_timeout=0.5")
    response = service.post("/payments", "k", json={})
    assert _check_problem(response, DEFAULT_PROBLEM_BASE_URL) == "store-unavailable"
    assert response.headers["retry-after"] == "2"


def test_b24_a_problem_never_contains_another_requests_data(serve: Serve) -> None:
    """The mismatch and in-flight problems carry nothing of the stored request or response."""
    service = serve()
    service.post("/payments", "k", json={"card": "4242-SECRET"})
    mismatch = service.post("/payments", "k", json={"card": "other"})
    assert "SECRET" not in mismatch.text
    assert "4242" not in mismatch.text
    assert "n" not in mismatch.json()


def _github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            text = match.group(1).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_b25_every_problem_type_links_to_a_documented_anchor() -> None:
    """Every problem's default `type` is a section of the docs page it names: docs/http.md,
    or docs/transactions.md for transactional mode's own."""
    for slug in PROBLEMS:
        page, _, anchor = problem_type(slug, Settings()).partition("#")
        assert anchor == slug
        assert page.startswith(SITE)
        markdown = DOCS.with_name(page.removeprefix(SITE).strip("/") + ".md")
        assert slug in _github_anchors(markdown.read_text()), (slug, markdown.name)
    assert f"{SITE}http/#" == DEFAULT_PROBLEM_BASE_URL


def test_b24_b25_transaction_aborted_is_listed_with_the_type_it_is_served_with() -> None:
    """transaction-aborted is in PROBLEMS with the status and title transactional mode answers
    with; its `type` stays the section of docs/transactions.md whatever `problem_base_url`."""
    assert PROBLEMS["transaction-aborted"] == (500, "Transaction aborted")
    served = f"{SITE}transactions/#transaction-aborted"
    assert problem_type("transaction-aborted", Settings()) == served
    assert problem_type("transaction-aborted", Settings(problem_base_url="https://x/#")) == served
    assert problem_type("key-mismatch", Settings(problem_base_url="https://x/#")) == (
        "https://x/#key-mismatch"
    )


def test_b25_the_policy_is_published() -> None:
    """Expiry, key format, scope, fingerprint, outcome and large-response policies exist."""
    text = DOCS.read_text()
    anchors = _github_anchors(text)
    assert set(POLICY_ANCHORS) <= anchors
    for anchor in POLICY_ANCHORS:
        assert f"(#{anchor})" in text  # and the problem sections link to them


def test_b25_every_setting_is_documented() -> None:
    """Every Settings field appears in the settings table of docs/http.md."""
    text = DOCS.read_text()
    for field in dataclasses.fields(Settings):
        if field.init:
            assert f"| `{field.name}` |" in text, field.name
