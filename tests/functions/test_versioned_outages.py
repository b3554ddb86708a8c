"""Versioned consumers in store mode: scopes, and a store that fails after the effect.

Against real stores: two scopes' messages never meet, not by entity and not by message id
(B8, B35); a scope function that gives no scope is refused before anything runs (B8); and a
store that goes away between the handler's effect and the recording of its version never
makes a redelivery apply the message again (B19, B28), whether it comes back within `wait`
or stays away longer. The store is reached through a relay (`tests/flow/relay.py`) that the
handler cuts right after its effect.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from retrysafe import InvalidKeyError, State, Store, open_store
from retrysafe.consumers import VersionCounter, should_requeue, versioned_message
from tests.conftest import fresh_store_url
from tests.flow.relay import Relay

WAIT_SECONDS = 30.0
_TIMEOUTS = {
    "redis": "socket_timeout=1&connect_timeout=1",
    "postgres": "connect_timeout=1&pool_timeout=1&read_timeout=1",
}
ENTITIES = "#entities"


@dataclass(frozen=True)
class Message:
    """A broker's message: an id, headers (tenant, entity, version) and a body."""

    message_id: str
    headers: dict[str, Any]
    body: bytes = b"{}"


def tenant_of(message: Message) -> object:
    """The scope function of the tests: the message's tenant header, None without one."""
    return message.headers.get("tenant")


@dataclass
class Handler:
    """A versioned handler whose effect counts its runs and can cut the store after one."""

    relay: Relay | None = None
    cut_after_effect: bool = False
    effects: list[tuple[object, int]] = field(default_factory=list)

    def __call__(self, message: Message) -> str:
        self.effects.append((message.headers.get("tenant"), message.headers["v"]))
        if self.cut_after_effect and self.relay is not None:
            self.cut_after_effect = False
            self.relay.cut()  # the store goes away between the effect and its version's record
        return f"applied {message.message_id}"


def deliver(handler: Callable[[Message], object], message: Message) -> list[str]:
    """Deliver `message` as a broker does: again after every requeueing error, until the
    handler returns (bounded); return what each delivery did."""
    seen: list[str] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            handler(message)
        except Exception as error:  # the broker requeues what asks for it
            if not should_requeue(error):
                raise
            seen.append(type(error).__name__)
            time.sleep(0.05)
            continue
        seen.append("acked")
        return seen
    raise AssertionError(f"never acknowledged: {seen}")


def recorded_version(store: Store, namespace: str, entity: str) -> str | None:
    """Return the version the store recorded for `entity` (read around the relay)."""
    found = [
        r for r in store.list_records(namespace=namespace + ENTITIES) if r.identity.key == entity
    ]
    return found[0].recovery_point if found else None


@pytest.fixture(params=["redis", "postgres"])
def relayed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Relay, str, str]]:
    """A fresh Redis or PostgreSQL store: (the relay, its URL through it, its direct URL)."""
    backend = str(request.param)
    with fresh_store_url(backend, request, tmp_path) as url:
        relay = Relay.before(url)
        try:
            yield relay, relay.url(url, _TIMEOUTS[backend]), url
        finally:
            relay.close()


def restore_once_refused(relay: Relay) -> threading.Thread:
    """Restore `relay` once a client was refused while it was cut: the store came back after
    the recording of the version failed at least once."""

    def watch() -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while relay.refused == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        relay.restore()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_b19_a_store_back_within_wait_records_the_version_and_the_message_runs_once(
    relayed: tuple[Relay, str, str],
) -> None:
    """The version is recorded once the store is back; the delivery is acknowledged at once."""
    relay, url, direct_url = relayed
    store, direct = open_store(url), open_store(direct_url)
    handler = Handler(relay, cut_after_effect=True)
    counter = VersionCounter()
    consume = versioned_message(
        store, namespace="prices", entity=lambda m: m.headers["sku"],
        version=lambda m: m.headers["v"], counter=counter, lease=3, wait=WAIT_SECONDS,
    )(handler)  # fmt: skip
    try:
        watcher = restore_once_refused(relay)
        assert deliver(consume, Message("m-1", {"sku": "s1", "v": 5})) == ["acked"]
        watcher.join(WAIT_SECONDS)
        assert relay.refused > 0  # the store was away after the effect
        assert deliver(consume, Message("m-1", {"sku": "s1", "v": 5})) == ["acked"]  # replayed
        assert deliver(consume, Message("m-0", {"sku": "s1", "v": 4})) == ["acked"]  # older
        assert handler.effects == [(None, 5)]
        assert recorded_version(direct, "prices", "s1") == "5"
        assert (counter.applied, counter.replayed, counter.stale) == (1, 1, 1)
    finally:
        store.close()
        direct.close()


def test_b19_a_store_away_longer_than_wait_never_applies_the_message_again(
    relayed: tuple[Relay, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The delivery returns and the version's loss is logged; the message's outcome is held
    (B19): a redelivery to this consumer is answered from it, and once the store is back it
    is stored, so another consumer's redelivery replays it too."""
    relay, url, direct_url = relayed
    store, direct = open_store(url), open_store(direct_url)
    handler = Handler(relay, cut_after_effect=True)

    def consumer(opened: Store) -> Callable[[Message], object]:
        return versioned_message(
            opened, namespace="orders", entity=lambda m: m.headers["sku"],
            version=lambda m: m.headers["v"], lease=3, wait=0.3,
        )(handler)  # fmt: skip

    consume = consumer(store)
    message = Message("m-1", {"sku": "s1", "v": 5})
    try:
        with caplog.at_level(logging.ERROR, logger="retrysafe.consumers"):
            assert deliver(consume, message) == ["acked"]
        assert "could not record it" in caplog.text
        assert consume(message) == "applied m-1"  # the store is still away: the held outcome
        relay.restore()
        deadline = time.monotonic() + WAIT_SECONDS
        while [r.state for r in direct.list_records(namespace="orders")] != [State.DONE]:
            assert time.monotonic() < deadline, "the held outcome was never stored"
            time.sleep(0.01)
        other = open_store(url)
        try:
            assert deliver(consumer(other), message) == ["acked"]  # another consumer: replayed
        finally:
            other.close()
        assert handler.effects == [(None, 5)]
    finally:
        store.close()
        direct.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_b8_b35_two_scopes_one_message_id_are_two_messages(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Tenants A and B both send message id 42 for entity s1: each is applied in its scope,
    and neither is answered with the other's stored value."""
    with fresh_store_url(backend, request, tmp_path) as url:
        store = open_store(url)
        handler, counter = Handler(), VersionCounter()
        consume = versioned_message(
            store, namespace="prices", scope=tenant_of, entity=lambda m: m.headers["sku"],
            version=lambda m: m.headers["v"], counter=counter,
        )(handler)  # fmt: skip
        try:
            first = consume(Message("42", {"tenant": "A", "sku": "s1", "v": 1}))
            second = consume(Message("42", {"tenant": "B", "sku": "s1", "v": 1}, b'{"b": 1}'))
            assert handler.effects == [("A", 1), ("B", 1)]
            assert first == second == "applied 42"
            assert (counter.applied, counter.replayed) == (2, 0)
            scopes = {r.identity.scope for r in store.list_records(namespace="prices")}
            assert scopes == {"A", "B"}
        finally:
            store.close()


@pytest.mark.parametrize("missing", [None, ""])
@pytest.mark.parametrize("mode", ["store", "connection"])
def test_b8_a_scope_function_without_a_scope_is_refused_before_the_effect(
    missing: object, mode: str, tmp_path: Path
) -> None:
    """A message whose scope function gives None or "" is refused (not requeued), in store
    mode and in transactional mode, and nothing is applied or recorded."""
    target: Any = (
        open_store(f"sqlite:///{tmp_path / 'store.db'}")
        if mode == "store"
        else sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    )
    handler = Handler()
    consume = versioned_message(
        target, namespace="accounts", scope=lambda m: m.headers.get("tenant", missing),
        entity=lambda m: m.headers["acct"], version=lambda m: m.headers["v"],
    )(handler)  # fmt: skip
    try:
        with pytest.raises(InvalidKeyError, match="without a scope is refused") as refused:
            consume(Message("m-1", {"acct": "1", "v": 1}))
        assert not should_requeue(refused.value)
        assert handler.effects == []
        if mode == "store":
            assert target.list_records() == []
        else:
            tables = target.execute("SELECT name FROM sqlite_master").fetchall()
            rows = [target.execute(f"SELECT * FROM {name}").fetchall() for (name,) in tables]  # noqa: S608
            assert all(found == [] for found in rows)
    finally:
        target.close()
