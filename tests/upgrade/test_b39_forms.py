"""B39: which forms the previous release (0.1.0) gave a fingerprint or a scope, and how the flow
honours a record in that form: replayed, waited for and taken over as a matching request's."""

from __future__ import annotations

import contextlib
import copy
import json
import pickle
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retrysafe import ManualClock
from retrysafe._engine import Decision
from retrysafe._fingerprint import Revised, digest, fingerprint_request, fingerprint_value
from retrysafe._flow import SyncFlow
from retrysafe._http import principal_of
from retrysafe._http.former import revised_principal
from retrysafe._http.scope import ScopeError
from retrysafe._record import Identity, State
from retrysafe.stores.memory import MemoryStore
from tests.upgrade.data import cases

DATA = Path(__file__).parent / "data"
FLOAT = b'{"amount": 0.10000000000000001, "cur": "EUR"}'


def _010_json(body: bytes) -> bytes:
    """0.1.0's `canonical_json`, for a body it could encode."""
    value = json.loads(body)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("body", [FLOAT, b'{"a": NaN}', b"[1e400, 2]"])
def test_b39_a_json_body_with_an_inexact_number_keeps_0_1_0_fingerprint_too(body: bytes) -> None:
    fingerprint = fingerprint_request("POST", "/p", body, json_canonical=True)
    assert type(fingerprint) is Revised
    assert fingerprint == digest((b"POST", b"/p", body))  # the current form: its raw bytes
    assert fingerprint.former == digest((b"POST", b"/p", _010_json(body)))


@pytest.mark.parametrize(
    ("body", "canonical"),
    [
        (b'{"b": 0.1, "a": 1}', True),  # 0.1.0 canonicalised it alike
        (FLOAT, False),  # fingerprinted raw: 0.1.0 did so too
        (b'{"s": "\\ud800", "n": 0.10000000000000001}', True),  # 0.1.0 failed: stored nothing
        (b"not json", True),
    ],
)
def test_b39_other_bodies_have_one_form(body: bytes, canonical: bool) -> None:
    fingerprint = fingerprint_request("POST", "/p", body, json_canonical=canonical)
    assert type(fingerprint) is str


def test_b39_a_model_with_a_set_of_ints_is_fingerprinted_as_0_1_0_did(tmp_path: Path) -> None:
    """The fingerprint 0.1.0 stored (in `data/store_010.db`) is the current form itself."""
    shutil.copyfile(DATA / "store_010.db", tmp_path / "store.db")
    with contextlib.closing(sqlite3.connect(tmp_path / "store.db")) as conn, conn:
        (stored,) = conn.execute(
            "SELECT fingerprint FROM retrysafe_records WHERE namespace = ?",
            (cases.NAMESPACE_INTS.encode(),),
        ).fetchone()
    fingerprint = fingerprint_value({"order": cases.int_order()})
    assert type(fingerprint) is str
    assert fingerprint.encode() == stored


def test_b39_a_model_with_a_set_of_strs_has_an_order_free_form_and_0_1_0s() -> None:
    orders = [cases.StrOrder(id="o", tags=tags) for tags in (["a", "b", "c"], ["c", "b", "a"])]
    fingerprints = [fingerprint_value({"order": order}) for order in orders]
    assert fingerprints[0] == fingerprints[1]  # the current form: whatever the set's order
    assert all(type(fingerprint) is Revised for fingerprint in fingerprints)
    single = fingerprint_value({"order": cases.StrOrder(id="o", tags=["a"])})
    assert type(single) is str  # one item has one order: 0.1.0's form


@pytest.mark.parametrize(
    ("user", "former"),
    [
        ({"sub": "s1", "email": "e@x"}, "builtins.dict:e@x"),  # 0.1.0: by e-mail
        (uuid.UUID(int=5), ""),  # 0.1.0: no principal, its credential
        ({"id": 0, "username": "zed"}, "builtins.dict:zed"),  # 0.1.0: the first truthy one
        ({"id": 0}, ""),
        ({"sub": "s1", "display_name": "Bob"}, None),  # never a display name
        ({"id": 7}, None),  # named alike
        ("carol", None),
        (42, None),
    ],
)
def test_b39_a_caller_0_1_0_named_otherwise_has_its_former_name(
    user: object, former: str | None
) -> None:
    name = principal_of(user)
    assert getattr(name, "former", None) == former


def test_b39_a_user_0_1_0_named_by_display_name_only_is_still_refused() -> None:
    with pytest.raises(ScopeError):
        principal_of(cases.USERS["bob"])


@dataclass(frozen=True)
class _Terms:
    lease: float = 30.0
    retention: float = 3600.0
    wait: float = 0.0


IDENTITY = Identity("http", "p:scope", "k")
FORMER = "0.1.0's fingerprint"
REVISED = Revised("the current fingerprint", FORMER)


def _flow_with(former_claim: float | None) -> tuple[SyncFlow, ManualClock]:
    """A flow on a memory store where 0.1.0 claimed IDENTITY with its fingerprint (a lease of
    `former_claim` seconds), or None: where it finished it."""
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    claim = store.claim(IDENTITY, FORMER, lease=former_claim or 30.0, retention=3600.0)
    if former_claim is None:
        store.complete(IDENTITY, claim.token, b"0.1.0's outcome", retention=3600.0)
    return SyncFlow(store), clock


def test_b39_a_record_in_the_former_form_is_replayed() -> None:
    flow, _ = _flow_with(None)
    admitted = flow.admit(IDENTITY, REVISED, _Terms())
    assert admitted.decision is Decision.REPLAY
    assert admitted.record is not None
    assert admitted.record.outcome == b"0.1.0's outcome"


def test_b39_a_record_in_the_former_form_in_flight_is_in_flight_not_a_mismatch() -> None:
    flow, _ = _flow_with(30.0)
    assert flow.admit(IDENTITY, REVISED, _Terms()).decision is Decision.IN_FLIGHT


def test_b39_a_lapsed_lease_in_the_former_form_is_taken_over() -> None:
    flow, clock = _flow_with(1.0)
    clock.advance(2.0)
    admitted = flow.admit(IDENTITY, REVISED, _Terms())
    assert admitted.decision is Decision.EXECUTE
    assert admitted.claim is not None
    assert admitted.claim.taken_over
    assert admitted.claim.record.fingerprint == FORMER  # the record keeps its form


def test_b39_another_request_is_still_a_mismatch() -> None:
    flow, _ = _flow_with(None)
    other = Revised("the current fingerprint", "another request's")
    for fingerprint in (other, "the current fingerprint"):
        assert flow.admit(IDENTITY, fingerprint, _Terms()).decision is Decision.MISMATCH


def test_b39_a_caller_named_otherwise_is_admitted_where_its_live_record_is() -> None:
    """The former identity's record answers for the whole request while it lives; with none
    there (or once it is past its retention), the request runs on its current identity."""
    flow, clock = _flow_with(None)
    renamed = Identity("http", Revised("p:current", IDENTITY.scope), "k")
    admitted = flow.admit(renamed, FORMER, _Terms())
    assert admitted.decision is Decision.REPLAY
    assert admitted.record is not None
    assert admitted.record.identity == IDENTITY

    clock.advance(3601.0)
    admitted = flow.admit(renamed, FORMER, _Terms())
    assert admitted.decision is Decision.EXECUTE
    assert admitted.claim is not None
    assert admitted.claim.record.identity == Identity("http", "p:current", "k")
    assert admitted.claim.record.state is State.IN_FLIGHT

    elsewhere = Identity("http", Revised("p:other", "p:nobody"), "k")
    assert flow.admit(elsewhere, FORMER, _Terms()).decision is Decision.EXECUTE


_NAMES = ("get_id", "pk", "id", "identity", "username", "sub", "email", "display_name")
_VALUES = st.sampled_from([None, "", 0, 1, 0.0, True, False, "x", "y@z", [], len])


@st.composite
def _users(draw: st.DrawFn) -> object:
    """A mapping or an object with some of the naming attributes (any of `_VALUES`)."""
    values = draw(st.dictionaries(st.sampled_from(_NAMES), _VALUES, max_size=5))
    if draw(st.booleans()):
        return {name: value for name, value in values.items() if name != "get_id"}
    namespace: dict[str, object] = {
        name: value for name, value in values.items() if name != "get_id"
    }
    if "get_id" in values:
        namespace["get_id"] = lambda self, value=values["get_id"]: value
    authenticated = draw(st.sampled_from([None, True, "method"]))
    if authenticated == "method":
        namespace["is_authenticated"] = lambda self: True
    elif authenticated is not None:
        namespace["is_authenticated"] = authenticated
    return type("User", (), namespace)()


@given(_users())
def test_b39_every_caller_0_1_0_named_otherwise_keeps_that_name(user: object) -> None:
    """`principal_of` skips 0.1.0's rules only for users it named alike: never a former lost."""
    try:
        name = principal_of(user)
    except ScopeError:
        return
    if name is not None:
        expected = revised_principal(user, str(name))
        assert getattr(name, "former", None) == getattr(expected, "former", None)


def test_b39_the_version_is_implicit_so_a_body_0_1_0_read_alike_adopts_its_form() -> None:
    """A record carries no version: one in the form 0.1.0 gave two bodies (`0.1`, and
    `0.10000000000000001`, which a float reads alike) is taken as 0.1.0's, whoever wrote it.
    So for this release, a retry spelled with the excess digits replays a key answered for
    `0.1`; the other way round is a mismatch (B13), as 0.1.0 never stored raw bytes."""
    exact = fingerprint_request("POST", "/p", b'{"amount": 0.1}', json_canonical=True)
    spelled = fingerprint_request(
        "POST", "/p", b'{"amount": 0.10000000000000001}', json_canonical=True
    )
    assert type(spelled) is Revised
    assert spelled.former == exact
    for first, then, decision in (
        (exact, spelled, Decision.REPLAY),
        (spelled, exact, Decision.MISMATCH),
    ):
        store = MemoryStore(clock=ManualClock())
        claim = store.claim(IDENTITY, first, lease=30.0, retention=3600.0)
        store.complete(IDENTITY, claim.token, b"the first outcome", retention=3600.0)
        assert SyncFlow(store).admit(IDENTITY, then, _Terms()).decision is decision


def test_b39_a_revised_value_keeps_both_forms_when_copied() -> None:
    for copied in (pickle.loads(pickle.dumps(REVISED)), copy.deepcopy(REVISED)):  # noqa: S301
        assert (type(copied), copied, copied.former) == (Revised, REVISED, FORMER)
