"""The MySQL store's claim and completion without a transaction around them.

A new key is claimed by a short insert alone (`INSERT_NEW`: its affected-rows count says it
inserted); when a record is there, it is read, and answered with unless it may be taken over;
then the claim is the conditional insert (`CLAIM`) and a read of the row as it stands, acquired
only if the row carries the claim's token. The completion of a new key is its update alone (the
store kept what it would read); any other reads, then updates, in one query. Each path, and what
can happen to the row between two statements (a delete, another claimant, a lost connection), on
a real server, both faces: the statements each call sent are watched (their names in
`MySQLTable`), and the interleavings are forced by acting on the row from a connection of the
test's own in between.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pymysql
import pytest

from retrysafe import FencedError, ManualClock, State, Store, StoreUnavailableError
from retrysafe.stores._async import mysql_records as async_records
from retrysafe.stores._sql.mysql import claim_params, counts_changed_rows, mysql_table, render
from retrysafe.stores._sync import mysql_records as sync_records
from retrysafe.stores._sync.mysql_records import MySQLRecords
from tests.stores.conftest import OpenStore, concrete
from tests.stores.test_mysql import LEASE, RETENTION, admin, ident, query, table_url, tables

pytestmark = pytest.mark.mysql

__all__ = ["table_url", "tables"]  # fixtures, shared with test_mysql.py

_STATEMENTS = (
    "insert_new", "claim", "claim_read", "rival_read", "latest_read", "complete", "lean_read"
)  # fmt: skip

Between = Callable[[list[str], Any], None]


def watch(store: Store, between: Between | None = None) -> list[list[str]]:
    """Return the list of what each of `store`'s round trips sends from now on (the names of
    its statements); `between` is called with each one's names and connection once it has
    run."""
    records = concrete(store)._records
    names = {getattr(records.table, name): name for name in _STATEMENTS}
    sent: list[list[str]] = []
    run = records._run

    def record(statements: tuple[tuple[str, Any], ...]) -> list[str]:
        sent.append([names.get(statement, statement) for statement, _ in statements])
        return sent[-1]

    if inspect.iscoroutinefunction(run):

        async def run_async(conn: Any, *statements: tuple[str, Any], **options: Any) -> Any:
            names_sent = record(statements)
            result = await run(conn, *statements, **options)
            if between is not None:
                between(names_sent, conn)
            return result

        records._run = run_async
    else:

        def run_sync(conn: Any, *statements: tuple[str, Any], **options: Any) -> Any:
            names_sent = record(statements)
            result = run(conn, *statements, **options)
            if between is not None:
                between(names_sent, conn)
            return result

        records._run = run_sync
    return sent


def after_the_insert(action: Callable[[Any], object]) -> Between:
    """A `between` that runs `action` once, on the connection, right after the first round
    trip of a claim."""
    done: list[bool] = []

    def between(names: list[str], conn: Any) -> None:
        if names == ["claim", "rival_read"] and not done:
            done.append(True)
            action(conn)

    return between


def table_of(url: str) -> str:
    return url.split("table=", 1)[1]


def test_b7_a_new_key_is_claimed_by_the_insert_alone(open_face: OpenStore, table_url: str) -> None:
    """A first claim sends one short statement, on a connection that counts changed rows, and
    the record it returns is the one stored."""
    store = open_face(table_url, ManualClock())
    assert store.get(ident()) is None  # the table made first
    counted: list[bool] = []
    sent = watch(store, lambda _, conn: counted.append(counts_changed_rows(conn)))
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert sent == [["insert_new"]]
    assert counted == [True]
    assert (claim.acquired, claim.taken_over) == (True, False)
    assert store.get(ident()) == claim.record


def test_b7_a_replay_reads_the_record_the_insert_left(open_face: OpenStore, table_url: str) -> None:
    """A claim on a done record changes nothing (the short insert), then reads it: not
    acquired, the outcome, and no conditional claim sent."""
    store = open_face(table_url, ManualClock())
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    done = store.complete(ident(), first.token, b"out", retention=RETENTION)
    sent = watch(store)
    replay = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert sent == [["insert_new"], ["latest_read"]]
    assert (replay.acquired, replay.record) == (False, done)


def test_b7_a_record_deleted_after_the_short_insert_found_it_is_claimed_fresh(
    open_face: OpenStore, table_url: str, mysql_url: str
) -> None:
    """The short insert finds a done record (no row changed); `keys delete` removes it before
    the read: the conditional insert writes a new record, and the claim acquires it, fresh."""
    clock = ManualClock()
    store = open_face(table_url, clock)
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.complete(ident(), first.token, b"out", retention=RETENTION)
    delete = f"DELETE FROM `{table_of(table_url)}`"  # noqa: S608 - the test's table

    def between(names: list[str], _: Any) -> None:
        if names == ["insert_new"]:
            query(mysql_url, delete)

    sent = watch(store, between)
    again = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert sent == [["insert_new"], ["latest_read"], ["claim", "rival_read"]]
    assert (again.acquired, again.taken_over, again.record.state) == (True, False, State.IN_FLIGHT)
    assert again.record.token != first.token
    assert store.get(ident()) == again.record


def test_b20_a_replay_whose_connection_drops_after_the_short_insert_is_unavailable(
    open_face: OpenStore, table_url: str, mysql_url: str
) -> None:
    """The store blips between the short insert (which found the done record and changed
    nothing) and the read: the claim raises StoreUnavailableError, nothing is claimed, and a
    retry replays the stored outcome."""
    store = open_face(table_url, ManualClock())
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    done = store.complete(ident(), first.token, b"out", retention=RETENTION)
    killed: list[bool] = []

    def between(names: list[str], conn: Any) -> None:
        if names == ["insert_new"] and not killed:
            killed.append(True)
            query(mysql_url, f"KILL {int(conn.thread_id())}")

    watch(store, between)
    with pytest.raises(StoreUnavailableError):
        store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert store.get(ident()) == done
    replay = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert (killed, replay.acquired, replay.record) == ([True], False, done)


def test_b7_a_connection_counting_found_rows_never_claims_by_the_short_insert(
    tables: Callable[..., str], mysql_url: str
) -> None:
    """With CLIENT_FOUND_ROWS the short insert counts the row it found as one, as it counts an
    insert: the store's primitives then skip it, and a done record is not acquired again."""
    flags = pymysql.constants.CLIENT.MULTI_STATEMENTS | pymysql.constants.CLIENT.FOUND_ROWS
    conn = admin(mysql_url, client_flag=flags)
    records = MySQLRecords(mysql_table(tables()), batched=True)
    try:
        records.create_schema(conn)
        first = records.claim(conn, ident(), "fp", now=1.0, lease=LEASE, retention=RETENTION)
        done = records.complete(conn, ident(), first.token, b"out", now=2.0, retention=RETENTION)
        assert not counts_changed_rows(conn)
        params = claim_params(ident(), "fp", now=3.0, lease=LEASE, retention=RETENTION)
        with conn.cursor() as cursor:  # why the primitives skip it here: the row found counts 1
            assert cursor.execute(render(conn, records.table.insert_new, params)) == 1
        replay = records.claim(conn, ident(), "fp", now=3.0, lease=LEASE, retention=RETENTION)
    finally:
        conn.close()
    assert (first.acquired, replay.acquired, replay.record) == (True, False, done)


def test_b16_b30_a_takeover_reads_back_what_it_kept(open_face: OpenStore, table_url: str) -> None:
    """A claim that takes over a lapsed lease gets the record with its creation time and
    recovery point kept, and `taken_over` set."""
    clock = ManualClock()
    store = open_face(table_url, clock)
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.checkpoint(ident(), first.token, "charged")
    clock.advance(LEASE + 1)
    sent = watch(store)
    takeover = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert sent == [["insert_new"], ["latest_read"], ["claim", "rival_read"], ["latest_read"]]
    assert (takeover.acquired, takeover.taken_over) == (True, True)
    record = takeover.record
    assert (record.created_at, record.recovery_point) == (first.record.created_at, "charged")
    assert record.token != first.token
    assert store.get(ident()) == record


def test_b7_a_record_deleted_between_the_takeover_and_its_read_is_claimed_again(
    open_face: OpenStore, table_url: str, mysql_url: str
) -> None:
    """The claim takes a lapsed lease over; `keys delete` removes the record before the claim
    reads what the takeover kept: the claim is made again, under the lock, and acquires a new
    record (nothing kept, not a takeover)."""
    clock = ManualClock()
    store = open_face(table_url, clock)
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.checkpoint(ident(), first.token, "charged")
    clock.advance(LEASE + 1)
    delete = f"DELETE FROM `{table_of(table_url)}`"  # noqa: S608 - the test's table
    sent = watch(store, after_the_insert(lambda _: query(mysql_url, delete)))
    again = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert sent == [
        ["insert_new"],
        ["latest_read"],
        ["claim", "rival_read"],
        ["latest_read"],
        ["claim", "claim_read"],
    ]
    assert (again.acquired, again.taken_over, again.record.recovery_point) == (True, False, None)
    assert again.record.created_at == clock.now()
    assert store.get(ident()) == again.record


def test_b16_a_record_another_claimant_took_before_the_read_is_theirs(
    open_face: OpenStore, table_url: str, mysql_url: str
) -> None:
    """The claim takes a lapsed lease over; before its read, another claimant's token is on
    the row (as a takeover of theirs would leave it): the claim is not acquired, and answers
    with their record; the completion of the first holder's token is refused."""
    clock = ManualClock()
    store = open_face(table_url, clock)
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(LEASE + 1)
    table = table_of(table_url)
    theirs = "f" * 32
    steal = f"UPDATE `{table}` SET token = %s"  # noqa: S608 - the test's table
    watch(store, after_the_insert(lambda _: query(mysql_url, steal, theirs)))
    lost = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert (lost.acquired, lost.record.token, lost.record.state) == (
        False,
        theirs,
        State.IN_FLIGHT,
    )
    assert store.get(ident()) == lost.record
    assert first.token != theirs


def test_b7_the_completion_of_a_new_key_is_its_update_alone(
    open_face: OpenStore, table_url: str
) -> None:
    """A new key this store claimed completes with the update alone; the record it returns is
    the one stored, with the creation time of the claim and the recovery point of the
    holder's checkpoint."""
    store = open_face(table_url, ManualClock())
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.checkpoint(ident(), claim.token, "charged")
    sent = watch(store)
    done = store.complete(ident(), claim.token, b"out", retention=RETENTION)
    assert sent == [["complete"]]
    assert (done.state, done.outcome, done.recovery_point) == (State.DONE, b"out", "charged")
    assert done.created_at == claim.record.created_at
    assert store.get(ident()) == done


def test_b7_b30_the_completion_of_a_takeover_reads_then_updates_in_one_round_trip(
    open_face: OpenStore, table_url: str
) -> None:
    """A claim that took a record over completes in one query, its read first: the record it
    returns keeps the creation time and recovery point the takeover kept."""
    clock = ManualClock()
    store = open_face(table_url, clock)
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    store.checkpoint(ident(), first.token, "charged")
    clock.advance(LEASE + 1)
    takeover = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    sent = watch(store)
    done = store.complete(ident(), takeover.token, b"out", retention=RETENTION)
    assert sent == [["lean_read", "complete"]]
    assert (done.recovery_point, done.created_at) == ("charged", first.record.created_at)
    assert store.get(ident()) == done


def test_b17_a_new_key_taken_over_elsewhere_is_fenced_at_its_update(
    open_face: OpenStore, table_url: str
) -> None:
    """The store keeps a new claim for its completion; once another store's claim takes the
    lapsed lease over, the completion's update changes nothing and raises FencedError."""
    clock = ManualClock()
    store, other = open_face(table_url, clock), open_face(table_url, clock)
    claim = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(LEASE + 1)
    theirs = other.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    sent = watch(store)
    with pytest.raises(FencedError):
        store.complete(ident(), claim.token, b"mine", retention=RETENTION)
    assert sent == [["complete"]]
    assert store.get(ident()) == theirs.record


def test_b7_past_its_bound_the_store_forgets_its_oldest_new_claims(
    open_face: OpenStore, table_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store keeps at most `_KEPT_AT_MOST` new claims for their completions: the oldest
    past it completes with its read, as a takeover does, and returns the same record."""
    for module in (async_records, sync_records):
        monkeypatch.setattr(module, "_KEPT_AT_MOST", 2)
    store = open_face(table_url, ManualClock())
    keys = [ident(f"key-{n}") for n in range(3)]
    claims = [store.claim(key, "fp", lease=LEASE, retention=RETENTION) for key in keys]
    sent = watch(store)
    done = [
        store.complete(key, claim.token, b"out", retention=RETENTION)
        for key, claim in zip(keys, claims, strict=True)
    ]
    assert sent == [["lean_read", "complete"], ["complete"], ["complete"]]
    assert done == [store.get(key) for key in keys]


def test_b20_b16_a_takeover_whose_connection_drops_before_its_read_holds_the_key(
    open_face: OpenStore, table_url: str, mysql_url: str
) -> None:
    """The store blips between a takeover and its read (the connection killed): the claim
    raises StoreUnavailableError, and since the takeover may have landed, the key is held, not
    run again: a retry finds it in flight until the lease it may have taken lapses, then takes
    it over."""
    clock = ManualClock()
    store = open_face(table_url, clock)
    first = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    clock.advance(LEASE + 1)
    watch(store, after_the_insert(lambda conn: query(mysql_url, f"KILL {int(conn.thread_id())}")))
    with pytest.raises(StoreUnavailableError):
        store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    retry = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert (retry.acquired, retry.record.state) == (False, State.IN_FLIGHT)
    assert retry.record.token != first.token  # the takeover landed, its claimant unanswered
    clock.advance(LEASE + 1)
    later = store.claim(ident(), "fp", lease=LEASE, retention=RETENTION)
    assert (later.acquired, later.taken_over) == (True, True)
