"""Encryption at rest (`?encryption_key_env=NAME`, `EncryptedStore`) on every real store: no
outcome in clear in the raw store, rotation, and every record that does not open refused."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from typer.testing import CliRunner

from retrysafe import (
    ConfigurationError,
    Identity,
    ManualClock,
    MissingExtraError,
    RecordUnreadableError,
    Store,
    open_async_store,
    open_store,
)
from retrysafe._encryption import SEALING_OVERHEAD, sealed_key_id
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.cli import app as cli
from retrysafe.stores.encrypted import EncryptedStore, Keyring, UnreadableRecord
from tests.conftest import cluster_seeds, fresh_store_url

MARKER = b"MARKER-7f3a-card-4242424242424242"
"""A body whose bytes must never show in the raw store."""
CONTROL = b"CONTROL-c41e-stored-in-clear"
"""A body stored without encryption: the raw reader must find it, or it proves nothing."""
IDENTITY = Identity("payments", "tenant-a", "order-1")
LEASE, RETENTION = 30.0, 3600.0
KEY_A, KEY_B, KEY_C = (Keyring.generate_key() for _ in range(3))
BACKENDS = ["memory", "sqlite", "postgres", "redis", "redis-cluster"]


def with_option(url: str, option: str) -> str:
    """Return `url` with one more query option."""
    return f"{url}{'&' if '?' in url else '?'}{option}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each store backend."""
    return str(request.param)


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store's URL on the test's backend."""
    with fresh_store_url(backend, request, tmp_path) as made:
        yield made


@pytest.fixture
def keys_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Set RS_TEST_KEYS to the keys given (comma-separated); return the URL option naming it."""

    def set_keys(*keys: str) -> str:
        monkeypatch.setenv("RS_TEST_KEYS", ",".join(keys))
        return "encryption_key_env=RS_TEST_KEYS"

    return set_keys


@pytest.fixture
def opened() -> Iterator[Callable[..., Store]]:
    """Open sync stores (`open_store`'s arguments); close them all afterwards."""
    stores: list[Store] = []

    def open_(url: str, **options: Any) -> Store:
        stores.append(open_store(url, **options))
        return stores[-1]

    yield open_
    for store in stores:
        store.close()


def complete(store: Store, body: bytes, identity: Identity = IDENTITY) -> None:
    """Claim `identity` and complete it with `body`."""
    claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
    assert claim.acquired
    store.complete(identity, claim.token, body, retention=RETENTION)


def bare(store: Store) -> Store:
    """The store behind an encrypted one: what it keeps, unopened."""
    assert isinstance(store, EncryptedStore)
    return store.store


def raw_contents(backend: str, url: str, store: Store, tmp_path: Path) -> bytes:
    """Every byte the backend keeps, read past retrysafe: files, rows, keys."""
    if backend == "memory":  # the memory store's records are the raw contents
        return b"".join(r.outcome or b"" for r in bare(store).list_records(limit=1000))
    if backend == "sqlite":  # the database file and its write-ahead log
        return b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())
    if backend == "postgres":
        return _postgres_rows(url)
    return _redis_values(url, cluster=backend == "redis-cluster")


def _postgres_rows(url: str) -> bytes:
    import psycopg

    base, query = url.split("?", 1)
    table = dict(part.split("=", 1) for part in query.split("&"))["table"]
    with psycopg.connect(base) as conn:
        rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()  # noqa: S608 - the test's table
    return b"".join(
        bytes(cell) if isinstance(cell, bytes | memoryview) else str(cell).encode()
        for row in rows
        for cell in row
    )


def _redis_values(url: str, *, cluster: bool) -> bytes:
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    prefix = url.split("prefix=", 1)[1].split("&", 1)[0]
    client: Any = (
        RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster_seeds(url)])
        if cluster
        else redis.Redis.from_url(url.split("?", 1)[0])
    )
    values = []
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            kind = client.type(key).decode()
            if kind == "string":
                values.append(client.get(key))
            elif kind == "hash":
                values.extend(client.hvals(key))
            elif kind == "zset":
                values.extend(member for member, _ in client.zrange(key, 0, -1, withscores=True))
    finally:
        client.close()
    return b"".join(values)


def test_the_raw_store_holds_no_plaintext_of_an_encrypted_outcome(
    backend: str,
    url: str,
    keys_env: Callable[..., str],
    opened: Callable[..., Store],
    tmp_path: Path,
) -> None:
    """An outcome stored through an encrypted store is nowhere in the backend's raw contents,
    while one stored in clear beside it is found there, and both read back as given."""
    store = opened(with_option(url, keys_env(KEY_A)))
    complete(store, b'{"card": "' + MARKER + b'"}')
    complete(bare(store), CONTROL, Identity("payments", "tenant-a", "control"))
    replay = store.claim(IDENTITY, "fp", lease=LEASE, retention=RETENTION)
    assert not replay.acquired
    assert replay.record.outcome == b'{"card": "' + MARKER + b'"}'
    contents = raw_contents(backend, url, store, tmp_path)
    assert CONTROL in contents
    assert MARKER not in contents
    stored = bare(store).get(IDENTITY)
    assert stored is not None
    assert stored.outcome is not None
    assert sealed_key_id(stored.outcome) is not None


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "memory"])
def test_the_async_face_reads_what_the_sync_face_sealed(
    url: str, keys_env: Callable[..., str], opened: Callable[..., Store]
) -> None:
    """An async encrypted store replays an outcome a sync one stored (on a store two
    instances share), and its own."""
    option = keys_env(KEY_A)
    complete(opened(with_option(url, option)), MARKER)

    async def main() -> None:
        store = open_async_store(with_option(url, option))
        try:
            found = await store.claim(IDENTITY, "fp", lease=LEASE, retention=RETENTION)
            assert found.record.outcome == MARKER
            other = Identity("payments", "tenant-a", "order-2")
            claim = await store.claim(other, "fp", lease=LEASE, retention=RETENTION)
            done = await store.complete(other, claim.token, b"second", retention=RETENTION)
            assert done.outcome == b"second"
            assert [r.outcome for r in await store.list_records(limit=5)] == [b"second", MARKER]
            waited = await store.wait(other, timeout=1)
            assert waited is not None
            assert waited.outcome == b"second"
        finally:
            await store.aclose()

    anyio.run(main)


def test_rotation_keeps_old_records_readable_and_seals_with_the_first_key(
    url: str, keys_env: Callable[..., str], opened: Callable[..., Store]
) -> None:
    """After B is put before A, records sealed with A still replay, new ones are sealed with B,
    and once A is dropped its records fail closed while B's still open."""
    first = opened(with_option(url, keys_env(KEY_A)))
    complete(first, b"sealed with A")
    if url == "memory://":  # its one instance holds the data: the same, with the new keyring
        rotated: Store = EncryptedStore(bare(first), Keyring([KEY_B, KEY_A]))
    else:
        rotated = opened(with_option(url, keys_env(KEY_B, KEY_A)))
    newer = Identity("payments", "tenant-a", "order-2")
    complete(rotated, b"sealed with B", newer)
    assert _outcome(rotated, IDENTITY) == b"sealed with A"
    old, new = (bare(rotated).get(i) for i in (IDENTITY, newer))
    assert old is not None
    assert old.outcome is not None
    assert new is not None
    assert new.outcome is not None
    a_id, b_id = (Keyring([key]).key_ids[0] for key in (KEY_A, KEY_B))
    assert (sealed_key_id(old.outcome), sealed_key_id(new.outcome)) == (
        bytes.fromhex(a_id),
        bytes.fromhex(b_id),
    )
    only_b = EncryptedStore(bare(rotated), Keyring([KEY_B]))
    assert _outcome(only_b, newer) == b"sealed with B"
    message = f"encrypted with key {a_id}, which the keyring"
    with pytest.raises(RecordUnreadableError, match=message):
        only_b.get(IDENTITY)


def _outcome(store: Store, identity: Identity) -> bytes | None:
    record = store.get(identity)
    assert record is not None
    return record.outcome


def _stored(store: Store, identity: Identity) -> bytes:
    record = bare(store).get(identity)
    assert record is not None
    assert record.outcome is not None
    return record.outcome


def _write_raw(store: Store, identity: Identity, outcome: bytes) -> None:
    """Store `outcome` as it is under `identity`, past the encryption (an attacker's write)."""
    inner = bare(store)
    inner.delete(identity)
    claim = inner.claim(identity, "fp", lease=LEASE, retention=RETENTION)
    inner.complete(identity, claim.token, outcome, retention=RETENTION)


def _refused(store: Store, identity: Identity, message: str) -> None:
    """Every read of `identity` raises RecordUnreadableError: never a replay of the stored bytes;
    a listing returns it marked, without its outcome."""
    with pytest.raises(RecordUnreadableError, match=message):
        store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
    with pytest.raises(RecordUnreadableError, match=message):
        store.get(identity)
    listed = [r for r in store.list_records(namespace=identity.namespace) if r.identity == identity]
    assert [type(r) for r in listed] == [UnreadableRecord]
    assert isinstance(listed[0], UnreadableRecord)
    assert listed[0].outcome is None
    assert re.search(message, listed[0].reason)
    assert store.delete(identity)  # what does not open can still be deleted


def test_a_tampered_ciphertext_fails_closed(
    url: str, keys_env: Callable[..., str], opened: Callable[..., Store]
) -> None:
    """A sealed outcome with one byte flipped raises RecordUnreadableError on every read."""
    store = opened(with_option(url, keys_env(KEY_A)))
    complete(store, MARKER)
    sealed = bytearray(_stored(store, IDENTITY))
    sealed[-20] ^= 0x01
    _write_raw(store, IDENTITY, bytes(sealed))
    _refused(store, IDENTITY, "fails authentication: it was altered, or sealed for another")


def test_a_ciphertext_moved_to_another_record_fails_closed(
    url: str, keys_env: Callable[..., str], opened: Callable[..., Store]
) -> None:
    """A sealed outcome copied onto another key, or another scope, does not open there."""
    store = opened(with_option(url, keys_env(KEY_A)))
    complete(store, MARKER)
    sealed = _stored(store, IDENTITY)
    for elsewhere in (
        Identity("payments", "tenant-a", "order-2"),
        Identity("payments", "tenant-b", "order-1"),
        Identity("refunds", "tenant-a", "order-1"),
    ):
        _write_raw(store, elsewhere, sealed)
        _refused(store, elsewhere, "fails authentication")
    assert _outcome(store, IDENTITY) == MARKER


def test_an_unknown_key_and_a_record_in_clear_fail_closed(
    url: str, keys_env: Callable[..., str], opened: Callable[..., Store]
) -> None:
    """A record sealed with a key the keyring lacks, or stored in clear, is unreadable."""
    store = opened(with_option(url, keys_env(KEY_A)))
    complete(store, MARKER)
    in_clear = Identity("legacy", "tenant-a", "before-encryption")
    complete(bare(store), b"stored before encryption was on", in_clear)
    stranger = EncryptedStore(bare(store), Keyring([KEY_C]))
    _refused(stranger, IDENTITY, f"encrypted with key {Keyring([KEY_A]).key_ids[0]}, which")
    _refused(store, in_clear, "is not encrypted: it was stored before encryption was on")


def test_a_replay_cache_in_front_answers_in_clear_and_stores_sealed(
    tmp_path: Path, keys_env: Callable[..., str], opened: Callable[..., Store]
) -> None:
    """With `replay_cache` and `encryption_key_env`, replays come from memory in clear while
    the store behind holds only the sealed outcome."""
    url = f"sqlite:///{tmp_path / 'store.db'}?replay_cache=10&{keys_env(KEY_A)}"
    store = opened(url)
    complete(store, MARKER)
    assert store.claim(IDENTITY, "fp", lease=LEASE, retention=RETENTION).record.outcome == MARKER
    assert store.hits == 1  # type: ignore[attr-defined]
    assert sealed_key_id(_stored(store.store, IDENTITY)) is not None  # type: ignore[attr-defined]


def test_an_encrypted_http_record_is_replayed_in_clear_and_a_tampered_one_is_not(
    tmp_path: Path, keys_env: Callable[..., str]
) -> None:
    """Through the ASGI middleware, a retry replays the body; after the stored outcome is
    altered, the retry gets 503 and the handler does not run again."""
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": MARKER})

    url = f"sqlite:///{tmp_path / 'store.db'}?{keys_env(KEY_A)}"
    headers = {"idempotency-key": "k-1", "authorization": "Bearer tenant"}

    async def main() -> list[httpx.Response]:
        store = open_async_store(url)
        transport = httpx.ASGITransport(IdempotencyMiddleware(app, store=store))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                answers = [await client.post("/pay", headers=headers) for _ in range(2)]
                with contextlib.closing(sqlite3.connect(tmp_path / "store.db")) as conn, conn:
                    conn.execute(
                        "UPDATE retrysafe_records SET outcome = CAST(outcome || x'00' AS BLOB)"
                        " WHERE key = ?",
                        (b"k-1",),
                    )
                with contextlib.closing(open_store(url)) as reader:  # no longer opens
                    (listed,) = reader.list_records(namespace="http")
                assert isinstance(listed, UnreadableRecord)
                assert "fails authentication" in listed.reason
                answers.append(await client.post("/pay", headers=headers))
                return answers
        finally:
            await store.aclose()

    first, replay, tampered = anyio.run(main)
    assert (first.status_code, replay.status_code, replay.content) == (201, 201, MARKER)
    assert tampered.status_code == 503
    assert MARKER not in tampered.content
    assert runs == [1]


def test_a_store_opened_without_its_keys_refuses_the_sealed_scope_secret(
    tmp_path: Path, keys_env: Callable[..., str]
) -> None:
    """B8: the middleware on the encrypted store seals the scope secret it generates; the same
    store opened without the keys answers 503 instead of hashing scopes with the ciphertext
    (which would give every caller another scope), and the handler does not run."""
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": MARKER})

    url = f"sqlite:///{tmp_path / 'store.db'}"
    headers = {"idempotency-key": "k-1", "authorization": "Bearer tenant"}

    async def post(store_url: str) -> httpx.Response:
        store = open_async_store(store_url)
        transport = httpx.ASGITransport(IdempotencyMiddleware(app, store=store))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.post("/pay", headers=headers)
        finally:
            await store.aclose()

    sealed = anyio.run(post, f"{url}?{keys_env(KEY_A)}")
    unkeyed = anyio.run(post, url)
    assert (sealed.status_code, unkeyed.status_code) == (201, 503)
    assert unkeyed.headers["content-type"] == "application/problem+json"
    assert runs == [1]
    with contextlib.closing(open_store(url)) as bare:
        secret = bare.get(SECRET_IDENTITY)
    assert secret is not None
    assert secret.outcome is not None
    assert sealed_key_id(secret.outcome) is not None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "The environment variable RS_TEST_KEYS holds no encryption key"),
        (" , ", "The environment variable RS_TEST_KEYS holds no encryption key"),
        ("c2hvcnQ=", "Key 1 of 1 in the environment variable RS_TEST_KEYS is not a key: give 32"),
        (
            f"{KEY_A},not base64!",
            "Key 2 of 2 in the environment variable RS_TEST_KEYS is not a key",
        ),
    ],
    ids=["unset", "blank", "short", "second-not-base64"],  # not the random key: xdist workers
)
def test_a_missing_or_malformed_key_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, message: str
) -> None:
    """A key variable that is unset, empty or malformed is refused when the store opens, and
    the message never shows a key."""
    if value is None:
        monkeypatch.delenv("RS_TEST_KEYS", raising=False)
    else:
        monkeypatch.setenv("RS_TEST_KEYS", value)
    url = f"sqlite:///{tmp_path / 'store.db'}?encryption_key_env=RS_TEST_KEYS"
    for opener in (open_store, open_async_store):
        with pytest.raises(ConfigurationError, match=message) as raised:
            opener(url)
        assert KEY_A not in str(raised.value)


def test_keys_are_given_once(tmp_path: Path, keys_env: Callable[..., str]) -> None:
    """An `encryption=` argument with the URL option, or the option twice, is refused."""
    option = keys_env(KEY_A)
    url = f"sqlite:///{tmp_path / 'store.db'}?{option}"
    with pytest.raises(ConfigurationError, match="Give the encryption keys once"):
        open_store(url, encryption=Keyring([KEY_A]))
    with pytest.raises(ConfigurationError, match="Give the encryption keys once"):
        open_store(f"{url}&{option}")


def test_the_encryption_argument_needs_no_environment(
    tmp_path: Path, opened: Callable[..., Store]
) -> None:
    """`open_store(url, encryption=Keyring(...))` seals like the URL option, from raw bytes."""
    keyring = Keyring([b"\x01" * 32])
    store = opened(f"sqlite:///{tmp_path / 'store.db'}", encryption=keyring, clock=ManualClock())
    complete(store, MARKER)
    assert _outcome(store, IDENTITY) == MARKER
    assert MARKER not in (tmp_path / "store.db").read_bytes()
    assert "01" * 32 not in repr(keyring)


def test_without_cryptography_the_keyring_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Making a keyring without `cryptography` installed raises MissingExtraError naming the
    `encryption` extra."""
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(MissingExtraError, match=r"retrysafe\[encryption\]"):
        Keyring([KEY_A])


@pytest.fixture
def sqlite_with_record(tmp_path: Path, keys_env: Callable[..., str]) -> str:
    """A SQLite store URL (without the option) holding IDENTITY sealed with KEY_A."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with contextlib.closing(open_store(with_option(url, keys_env(KEY_A)))) as store:
        complete(store, b'{"card": "' + MARKER + b'"}')
    return url


def _show(url: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["keys", "show", IDENTITY.key, "--store", url, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_keys_show_decrypts_with_the_option_and_says_encrypted_without(
    sqlite_with_record: str, keys_env: Callable[..., str]
) -> None:
    """`retrysafe keys show` opens the outcome when the store URL names the keys; without
    them it says the outcome is encrypted, with which key, and shows none of its bytes."""
    opened_outcome = _show(with_option(sqlite_with_record, keys_env(KEY_A)))["outcome"]
    assert opened_outcome == {"kind": "raw", "text": '{"card": "' + MARKER.decode() + '"}'}
    sealed = _show(sqlite_with_record)["outcome"]
    assert sealed == {
        "kind": "encrypted",
        "key_id": Keyring([KEY_A]).key_ids[0],
        "bytes": len(b'{"card": "' + MARKER + b'"}') + SEALING_OVERHEAD,
    }
