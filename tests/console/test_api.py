"""The console over HTTP on a real server: the token on every URL, the JSON API's views of records
made by real requests, and delete and purge behind their confirmation and CSRF checks."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrysafe.console._data import PREVIEW_CHARS
from tests.console.conftest import BIG, STUCK, TOKEN, Console

PAGES = ["/", "/records?namespace=jobs", "/record?namespace=jobs&scope=worker-7&key=x"]
PAGES += ["/record/delete?namespace=jobs&scope=w&key=x", "/purge", "/no/such/page"]
API = ["/api/summary", "/api/records?namespace=jobs", "/api/record?namespace=a&scope=b&key=c"]
POSTS = ["/record/delete", "/purge", "/api/record/delete", "/api/purge"]
STUCK_ID = {"namespace": STUCK.namespace, "scope": STUCK.scope, "key": STUCK.key}


def _payment(console: Console) -> dict[str, object]:
    """Return the listing's entry of the big payment (the middleware chose its namespace)."""
    with console.client() as client:
        summary = client.get("/api/summary").json()
        names = [row["namespace"] for row in summary["namespaces"]]
        (namespace,) = [name for name in names if name != STUCK.namespace]
        records = client.get("/api/records", params={"namespace": namespace}).json()["records"]
    return next(r for r in records if r["key"] == "order-big")


def test_every_url_without_the_token_answers_401_problem_json(console: Console) -> None:
    """Pages, API calls, POSTs and unknown paths all answer 401 problem+json without the token,
    with a wrong one, and with a wrong `?token=`."""
    with console.client(token=False) as client:
        answers = [client.get(url) for url in PAGES + API]
        answers += [client.post(url, json={"confirm": True}) for url in POSTS]
        answers.append(client.get("/api/summary", headers={"authorization": "Bearer nope"}))
        answers.append(client.get("/", params={"token": "nope"}))
        answers.append(client.get("/", headers={"cookie": f"retrysafe_console={TOKEN}"}))
    for response in answers:
        assert response.status_code == 401, (response.request.url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    with console.client() as client:
        assert client.get(
            f"/api/record?namespace=jobs&scope={STUCK.scope}&key={STUCK.key}"
        ).is_success


def test_the_summary_counts_by_namespace_and_shows_the_stuck_claim(console: Console) -> None:
    """Three payments made through the middleware are done; the claim whose 5 s lease ended
    two minutes ago is stuck, with how long; the expired record and the scope secret are not
    counted, and the page says replays and mismatches are not recorded."""
    with console.client() as client:
        summary = client.get("/api/summary").json()
    rows = {row["namespace"]: row for row in summary["namespaces"]}
    jobs = rows.pop(STUCK.namespace)
    assert (jobs["in_flight"], jobs["stuck"], jobs["done"]) == (1, 1, 0)
    ((namespace, payments),) = rows.items()  # the middleware's, and not retrysafe.internal
    assert namespace != "retrysafe.internal"
    assert (payments["in_flight"], payments["done"]) == (0, len(console.keys))
    (stuck,) = summary["stuck"]
    assert (stuck["key"], stuck["stuck"], stuck["lease_live"]) == (STUCK.key, True, False)
    assert 100 < stuck["lease_expired_seconds"] < 600
    assert summary["totals"]["in_flight"] == 1
    assert summary["totals"]["done"] == len(console.keys)
    assert summary["events"]["recorded"] is False


def test_one_record_in_full_has_its_decoded_response_cut_to_the_preview(console: Console) -> None:
    """A payment's record shows its fingerprint, status, headers, a shortened fencing token and
    its body cut to PREVIEW_CHARS, with its full size."""
    listed = _payment(console)
    identity = {name: listed[name] for name in ("namespace", "scope", "key")}
    with console.client() as client:
        record = client.get("/api/record", params=identity).json()
    assert isinstance(record["fingerprint"], str)
    assert len(record["fingerprint"]) >= 16
    assert str(record["lease_owner"]).endswith("…")
    assert len(record["lease_owner"]) == 9
    outcome = record["outcome"]
    assert outcome["kind"] == "http"
    assert outcome["status"] == 201
    assert ["content-type", "application/json"] in outcome["headers"]
    assert len(outcome["body"]) == PREVIEW_CHARS
    assert outcome["truncated"] == ["body"]
    assert record["size"] > BIG


def test_delete_needs_confirm_true_and_then_deletes(console: Console) -> None:
    """A delete without `"confirm": true` is refused (400) and keeps the record; confirmed, it
    deletes it, and the record then answers 404."""
    with console.client() as client:
        refused = client.post("/api/record/delete", json=STUCK_ID)
        assert refused.status_code == 400, refused.text
        assert "confirm" in refused.json()["detail"]
        version = client.get("/api/record", params=STUCK_ID).json()["version"]
        confirmed = {**STUCK_ID, "version": version, "confirm": True}
        done = client.post("/api/record/delete", json=confirmed)
        assert done.status_code == 200, done.text
        assert done.json()["deleted"] is True
        assert done.json()["lease_was_live"] is False
        gone = client.get("/api/record", params=STUCK_ID)
        assert gone.status_code == 404
        assert gone.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "fields",
    [{"namespace": 1}, {"key": None}, {"scope": ["a"]}, {"key": {"k": 1}}, {"namespace": None}],
)
def test_b24_a_delete_whose_identity_is_not_three_strings_is_400(
    console: Console, fields: dict[str, object]
) -> None:
    """A delete naming its record with anything but strings (a number, null, a list) is a
    precise 400 and deletes nothing: it was looked up as the text of the value ("None", "1")."""
    with console.client() as client:
        refused = client.post("/api/record/delete", json={**STUCK_ID, **fields, "confirm": True})
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert '"namespace", "scope" and "key", each a string' in refused.json()["detail"]
        assert client.get("/api/record", params=STUCK_ID).status_code == 200


def test_purge_needs_confirm_true_and_then_purges_the_expired_record(console: Console) -> None:
    """A purge without confirmation purges nothing; confirmed, it deletes the expired record."""
    with console.client() as client:
        assert client.post("/api/purge", json={}).status_code == 400
        purged = client.post("/api/purge", json={"confirm": True})
    assert purged.status_code == 200, purged.text
    assert purged.json() == {"purged": 1}


def test_the_login_sets_a_strict_http_only_cookie_and_drops_the_token(console: Console) -> None:
    """`?token=` answers a redirect to the same page without it, setting an HttpOnly,
    SameSite=Strict cookie that then opens the pages."""
    with console.client(token=False) as client:
        login = client.get("/records", params={"namespace": "jobs", "token": TOKEN})
        assert login.status_code == 303
        assert login.headers["location"].endswith("/records?namespace=jobs")
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert TOKEN not in cookie
        page = client.get(login.headers["location"])
    assert page.status_code == 200
    assert STUCK.key in page.text


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"origin": "http://x.test"},
    ],
    ids=["cross-site", "same-site", "foreign-origin"],
)
def test_a_cross_site_post_is_refused_and_changes_nothing(
    console: Console, headers: dict[str, str]
) -> None:
    """A POST a browser marks as from another site or origin answers 403, even with a valid
    token and a confirmed form, and the record stays."""
    form = {**STUCK_ID, "confirm": "yes"}
    with console.client() as client:
        for url, data in (("/record/delete", form), ("/purge", {"confirm": "yes"})):
            refused = client.post(url, data=data, headers=headers)
            assert refused.status_code == 403, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
        api = client.post("/api/record/delete", json={**STUCK_ID, "confirm": True}, headers=headers)
        assert api.status_code == 403
        assert client.get("/api/record", params=STUCK_ID).status_code == 200


def test_a_cookie_post_without_the_csrf_token_is_refused(console: Console) -> None:
    """Logged in by cookie, a confirmed form or API POST without the page's CSRF token is
    refused (403) and deletes nothing."""
    with console.client(token=False) as client:
        client.get("/", params={"token": TOKEN})  # the cookie
        form = client.post("/record/delete", data={**STUCK_ID, "confirm": "yes"})
        api = client.post("/api/record/delete", json={**STUCK_ID, "confirm": True})
        assert (form.status_code, api.status_code) == (403, 403)
        assert client.get("/api/record", params=STUCK_ID).status_code == 200


def test_an_unconfirmed_form_post_goes_to_the_confirmation_page(console: Console) -> None:
    """A delete form posted without `confirm=yes` redirects to the confirmation step, and the
    record stays; the confirmation page's form then deletes it."""
    with console.client() as client:
        answer = client.post("/record/delete", data=STUCK_ID)
        assert answer.status_code == 303
        page = client.get(answer.headers["location"])
        assert "Delete this record?" in page.text
        assert client.get("/api/record", params=STUCK_ID).status_code == 200
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        version = re.search(r'name="version" value="([0-9a-f]+)"', page.text)
        assert csrf is not None
        assert version is not None
        form = {**STUCK_ID, "version": version[1], "confirm": "yes", "csrf": csrf[1]}
        done = client.post("/record/delete", data=form)
        assert done.status_code == 200
        assert "Deleted record" in done.text
        assert client.get("/api/record", params=STUCK_ID).status_code == 404


REFUSED_API = [
    "/api/records",
    "/api/records?namespace=jobs&limit=0",
    "/api/records?namespace=jobs&limit=-1",
    "/api/records?namespace=jobs&limit=1001",
    "/api/records?namespace=jobs&limit=lots",
    "/api/records?namespace=jobs&limit=99999999999999999999999",
    "/api/record?namespace=jobs",
    "/api/record?scope=a&key=b",
]
REFUSED_PAGES = [
    "/records",
    "/records?namespace=jobs&limit=0",
    "/record?namespace=jobs&scope=a",
    "/record/delete?key=x",
]


def test_a_url_the_api_cannot_use_is_400_problem_json_never_500(console: Console) -> None:
    """A listing without `namespace` or with a limit out of range, a record URL without its
    identity: 400 problem+json saying what is missing or wrong (they were a 500)."""
    with console.client() as client:
        answers = {url: client.get(url) for url in REFUSED_API}
    for url, response in answers.items():
        assert response.status_code == 400, (url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 400
    assert "between 1 and 1000" in answers["/api/records?namespace=jobs&limit=-1"].json()["detail"]
    assert "missing key" in answers["/api/record?namespace=jobs"].json()["detail"].replace(
        "scope, ", ""
    )


def test_b24_an_unknown_api_path_or_method_is_problem_json(console: Console) -> None:
    """A path under /api/ that no endpoint takes is a 404, and a method an endpoint does not
    take a 405 with its `Allow`, both problem+json as the API's other errors; a page path no
    route takes is the HTML error page."""
    with console.client() as client:
        missing = client.get("/api/nope")
        wrong = client.delete("/api/record")
        page = client.get("/no/such/page")
    for response, status in ((missing, 404), (wrong, 405)):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
    assert "GET" in wrong.headers["allow"]
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")


def test_a_page_url_it_cannot_use_is_the_400_error_page(console: Console) -> None:
    """The same mistakes on the pages answer the console's error page, 400, in HTML."""
    with console.client() as client:
        answers = {url: client.get(url) for url in REFUSED_PAGES}
    for url, response in answers.items():
        assert response.status_code == 400, (url, response.text)
        assert response.headers["content-type"].startswith("text/html")
        assert "Traceback" not in response.text


QUERY_NAMES = st.sampled_from(["namespace", "scope", "key", "limit", "state"])


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(["/api/records", "/api/record", "/records", "/record"]),
    query=st.dictionaries(QUERY_NAMES, st.text(max_size=30), max_size=5),
)
def test_any_query_is_answered_without_a_server_error(
    console: Console, path: str, query: dict[str, str]
) -> None:
    """Whatever query a caller sends to a listing or record URL (any names the endpoints read,
    any text), the answer is 200, 400 or 404, never a 500."""
    with console.client() as client:
        response = client.get(path, params=query)
    assert response.status_code in (200, 400, 404), (path, query, response.text)


@pytest.mark.parametrize("body", [b"[" * 30_000 + b"]" * 30_000, b"{\xff", b"9" * 5000])
def test_a_post_body_that_is_not_json_is_400_problem_json(console: Console, body: bytes) -> None:
    """A state change whose body nests too deep to parse, is not UTF-8, or is a number of 5000
    digits answers 400 problem+json (the first was a 500)."""
    with console.client() as client:
        response = client.post("/api/purge", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == "The body is not JSON: send a JSON object."
