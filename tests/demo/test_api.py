"""The demo payments API on SQLite, PostgreSQL and MySQL: duplicates, bad input, tenants, unique
email."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from retrysafe import open_store
from tests.demo.conftest import RunningApi, scope_of

PAYMENT = {"customer": "ada", "amount": 1999, "currency": "eur"}
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def test_payment_is_created_and_listed(api: RunningApi) -> None:
    """A payment answers 201 with its fields and shows in the tenant's list."""
    with api.client() as client:
        created = client.post("/payments", json=PAYMENT)
        listed = client.get("/payments", params={"customer": "ada"})
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"id", "customer", "amount", "currency", "status", "created_at"}
    assert (body["customer"], body["amount"], body["currency"]) == ("ada", 1999, "EUR")
    assert listed.status_code == 200
    assert listed.json() == {"payments": [body]}


def test_b10_retry_with_the_same_key_replays_and_charges_once(api: RunningApi) -> None:
    """A repeat with the same key gets the stored 201 byte for byte, and the table has one row."""
    headers = {"Idempotency-Key": '"order-1"'}
    with api.client() as client:
        first = client.post("/payments", json=PAYMENT, headers=headers)
        second = client.post("/payments", json=PAYMENT, headers=headers)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(api.app.database.list_payments("tenant-a")) == 1


def test_b14_parallel_duplicates_charge_once(api: RunningApi) -> None:
    """Eight identical requests with one key, at once, make exactly one payment."""
    headers = {"Idempotency-Key": '"double-click"'}

    def pay(_: int) -> tuple[int, str]:
        with api.client() as client:
            response = client.post("/payments", json=PAYMENT, headers=headers)
            return response.status_code, response.json().get("id", "")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(pay, range(8)))
    rows = api.app.database.list_payments("tenant-a")
    assert len(rows) == 1
    assert all(status in (201, 409) for status, _ in answers)
    assert {payment_id for status, payment_id in answers if status == 201} == {rows[0].id}


def test_without_a_key_every_request_charges(api: RunningApi) -> None:
    """Without Idempotency-Key the API cannot tell a retry from a new payment: two rows."""
    with api.client() as client:
        client.post("/payments", json=PAYMENT)
        client.post("/payments", json=PAYMENT)
    assert len(api.app.database.list_payments("tenant-a")) == 2


def test_b8_tenants_are_apart(api: RunningApi) -> None:
    """The same key from two tenants makes two payments, and each tenant lists only its own."""
    headers = {"Idempotency-Key": '"shared-key"'}
    with api.client("tenant-a") as a, api.client("tenant-b") as b:
        paid_a = a.post("/payments", json=PAYMENT, headers=headers)
        paid_b = b.post("/payments", json=PAYMENT, headers=headers)
        listed_a = a.get("/payments").json()["payments"]
        listed_b = b.get("/payments").json()["payments"]
    assert "Idempotent-Replayed" not in paid_b.headers
    assert [p["id"] for p in listed_a] == [paid_a.json()["id"]]
    assert [p["id"] for p in listed_b] == [paid_b.json()["id"]]
    store = open_store(api.store_url)
    try:
        assert len(store.list_records(scope=scope_of("tenant-a"))) == 1
        assert len(store.list_records(scope=scope_of("tenant-b"))) == 1
    finally:
        store.close()


def test_b8_tenants_differing_only_in_case_are_apart(api: RunningApi) -> None:
    """Bearer tokens `Tenant-A` and `tenant-a` are two tenants: each lists only its own payment
    (MySQL compares the demo's columns byte for byte, not case-insensitively)."""
    with api.client("Tenant-A") as upper, api.client("tenant-a") as lower:
        paid_upper = upper.post("/payments", json=PAYMENT)
        paid_lower = lower.post("/payments", json=PAYMENT)
        listed_upper = upper.get("/payments").json()["payments"]
        listed_lower = lower.get("/payments").json()["payments"]
    assert [p["id"] for p in listed_upper] == [paid_upper.json()["id"]]
    assert [p["id"] for p in listed_lower] == [paid_lower.json()["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"amount": 100, "currency": "EUR"}', "customer"),
        (b'{"customer": "ada", "amount": -5, "currency": "EUR"}', "amount"),
        (b'{"customer": "ada", "amount": 0, "currency": "EUR"}', "amount"),
        (b'{"customer": "ada", "amount": 10.5, "currency": "EUR"}', "amount"),
        (b'{"customer": "ada", "amount": true, "currency": "EUR"}', "amount"),
        (b'{"customer": "ada", "amount": 100, "currency": "euros"}', "currency"),
        (b'{"customer": "", "amount": 100, "currency": "EUR"}', "customer"),
        (b'{"customer": "ada", "amount": 100, "currency": "EUR", "x": 1}', "x"),
        # JSON that Python's parser refuses other than by a syntax error (they were a 500):
        (b"[" * 100_000 + b"]" * 100_000, "body"),  # nested too deep for any Python's parser
        (b'{"customer": "ada", "amount": ' + b"9" * 5000 + b', "currency": "EUR"}', "body"),
    ],
)
def test_invalid_payment_gets_422_problem_and_stores_nothing(
    api: RunningApi, body: bytes, field: str
) -> None:
    """Bad JSON (also nested too deep, or a number of 5000 digits), missing fields,
    non-positive or fractional amounts answer 422 problem+json."""
    with api.client() as client:
        response = client.post(
            "/payments", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert field in [error["field"] for error in problem["errors"]]
    assert api.app.database.list_payments("tenant-a") == []


def test_b9_missing_token_gets_401_and_leaves_no_record(api: RunningApi) -> None:
    """A request without a bearer token is refused before the idempotency layer runs."""
    with api.client(tenant=None) as client:
        response = client.post("/payments", json=PAYMENT, headers={"Idempotency-Key": '"k"'})
        health = client.get("/health")
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert health.status_code == 200
    store = open_store(api.store_url)
    try:
        assert store.list_records() == []
    finally:
        store.close()


def test_b9_a_token_padded_past_base64_gets_401(api: RunningApi) -> None:
    """A bearer token is base64-like: up to two `=` of padding pay as that tenant; more is no
    token at all (401), so no tenant id outgrows the payments table's column."""
    with api.client("tenant-a==") as padded, api.client("t" * 128 + "=" * 200) as overlong:
        paid = padded.post("/payments", json=PAYMENT)
        refused = overlong.post("/payments", json=PAYMENT)
    assert paid.status_code == 201
    assert refused.status_code == 401
    assert [p.id for p in api.app.database.list_payments("tenant-a==")] == [paid.json()["id"]]


def test_b31_repeated_user_insert_answers_with_the_existing_profile(api: RunningApi) -> None:
    """The same profile again answers 200 with the first one; the email is case-insensitive."""
    with api.client() as client:
        first = client.post("/users", json={"email": "Ada@Example.com", "name": "Ada"})
        again = client.post("/users", json={"email": "ada@example.com", "name": "Ada"})
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()


def test_b31_other_profile_with_a_used_email_gets_409(api: RunningApi) -> None:
    """Another name under a used email is a conflict, said so in a 409 problem; nothing changes."""
    with api.client() as client:
        first = client.post("/users", json={"email": "ada@example.com", "name": "Ada"})
        clash = client.post("/users", json={"email": "ada@example.com", "name": "Grace"})
        again = client.post("/users", json={"email": "ada@example.com", "name": "Ada"})
    assert clash.status_code == 409
    assert clash.headers["Content-Type"] == "application/problem+json"
    assert "already exists" in clash.json()["detail"]
    assert again.json()["id"] == first.json()["id"]


def test_b31_email_is_unique_per_tenant_not_globally(api: RunningApi) -> None:
    """Two tenants may each have a profile with the same email."""
    with api.client("tenant-a") as a, api.client("tenant-b") as b:
        first = a.post("/users", json={"email": "ada@example.com", "name": "Ada"})
        second = b.post("/users", json={"email": "ada@example.com", "name": "Ada"})
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]


def test_b31_concurrent_user_inserts_without_keys_create_one_profile(api: RunningApi) -> None:
    """Eight simultaneous inserts of one email, with no key at all, leave one profile."""

    def create(_: int) -> tuple[int, str]:
        with api.client() as client:
            response = client.post("/users", json={"email": "race@example.com", "name": "R"})
            return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(create, range(8)))
    assert sorted(status for status, _ in answers) == [200] * 7 + [201]
    assert len({user_id for _, user_id in answers}) == 1


def test_b31_the_database_itself_refuses_a_second_profile(api: RunningApi) -> None:
    """The unique constraint on (tenant, email) holds below the API: a raw INSERT fails."""
    database = api.app.database
    database.insert_user(tenant="tenant-a", email="ada@example.com", name="Ada")
    # The demo's own connection, for a raw statement that bypasses ON CONFLICT.
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"), database._connect() as conn:
        conn.execute(
            database.tables.sql(
                "INSERT INTO {users} (id, tenant, email, name, created_at) VALUES (?, ?, ?, ?, ?)"
            ),
            ("usr_raw", "tenant-a", "ada@example.com", "Ada", database.tables.timestamp(EPOCH)),
        )


@pytest.mark.parametrize(
    "body",
    [b'{"email": "not-an-email", "name": "A"}', b'{"email": "a@example.com"}', b"nope"],
)
def test_invalid_user_gets_422_and_stores_nothing(api: RunningApi, body: bytes) -> None:
    """A malformed profile answers 422 problem+json and creates nothing."""
    with api.client() as client:
        response = client.post("/users", content=body)
        retry = client.post("/users", json={"email": "a@example.com", "name": "A"})
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    assert retry.status_code == 201  # nothing was stored under that email before
