"""`retrysafe keys` on an encrypted store: with `?encryption_key_env=NAME` it reads the records
in clear; without the option it says a response is encrypted, and under which key, but never
prints it, sealed or open."""

from __future__ import annotations

import base64
import contextlib

import pytest
from typer.testing import CliRunner

from retrysafe import open_store
from retrysafe.stores.encrypted import Keyring
from tests.cli.conftest import HTTP_BODY, KnownRecords
from tests.cli.test_keys import as_json, ids, keys, listed

KEYS_ENV = "RETRYSAFE_TEST_CLI_KEYS"
KEY_TEXT = Keyring.generate_key()
OPTION = f"encryption_key_env={KEYS_ENV}"


@pytest.fixture
def cli_store_url(cli_store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each backend's fresh store (tests/cli/conftest.py), encrypted with the key that the
    environment variable `KEYS_ENV` holds; `known` fills it through this URL, so sealed."""
    monkeypatch.setenv(KEYS_ENV, KEY_TEXT)
    return f"{cli_store_url}&{OPTION}"


def bare(url: str) -> str:
    """`url` without the encryption option: the store opened without its keys."""
    return url.replace(f"&{OPTION}", "")


def show(runner: CliRunner, url: str, scope: str, *options: str) -> dict[str, object]:
    """`keys show order-1 --scope SCOPE --json` (and `options`): what it printed."""
    return as_json(keys(runner, url, "show", "order-1", "--scope", scope, *options, "--json"))


def test_show_with_the_option_decrypts_the_stored_outcomes(
    runner: CliRunner, known: KnownRecords
) -> None:
    """`show` on the URL with `encryption_key_env` prints the HTTP response and a raw
    outcome in clear."""
    assert show(runner, known.url, "scope-a")["outcome"] == {
        "kind": "http",
        "status": 201,
        "headers": [["content-type", "application/json"]],
        "body": HTTP_BODY.decode(),
    }
    raw = show(runner, known.url, "scope-b", "--namespace", "functions")
    assert raw["outcome"] == {"kind": "raw", "text": "[42]"}


def test_show_without_the_keys_says_encrypted_and_prints_neither_form(
    runner: CliRunner, known: KnownRecords
) -> None:
    """Without the option, `show` gives the outcome's kind "encrypted", the sealing key's id
    and its size; neither the plaintext nor the ciphertext appears, in JSON or in the table."""
    url = bare(known.url)
    data = show(runner, url, "scope-a")
    with contextlib.closing(open_store(url)) as store:
        record = store.get(known.done)
    assert record is not None
    assert record.outcome is not None
    key_id = Keyring([KEY_TEXT]).key_ids[0]
    assert data["outcome"] == {"kind": "encrypted", "key_id": key_id, "bytes": len(record.outcome)}
    table = keys(runner, url, "show", "order-1", "--scope", "scope-a")
    assert table.exit_code == 0, table.output
    assert key_id in table.stdout
    for output in (str(data), table.stdout):
        assert "pay_1" not in output
        assert base64.b64encode(record.outcome).decode()[:24] not in output
        assert record.outcome.hex()[:24] not in output


def test_show_with_another_key_says_unreadable_and_names_the_key(
    runner: CliRunner, known: KnownRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With keys that do not open the record, `show` prints the record with its outcome as
    unreadable, naming the sealing key's id, and prints none of the outcome."""
    monkeypatch.setenv(KEYS_ENV, Keyring.generate_key())
    result = keys(runner, known.url, "show", "order-1", "--scope", "scope-a", "--json")
    outcome = as_json(result)["outcome"]
    assert isinstance(outcome, dict)
    assert (outcome["kind"], outcome["key_id"]) == ("unreadable", Keyring([KEY_TEXT]).key_ids[0])
    assert "pay_1" not in result.output


def test_list_stats_and_purge_work_with_the_option(runner: CliRunner, known: KnownRecords) -> None:
    """`list`, `stats` and `purge` take the URL with `encryption_key_env` on every backend
    (PostgreSQL's connection check leaves the option out): the records, plaintext sizes,
    and the expired ones purged."""
    live = ids(known.done, known.raw, known.in_flight)
    assert listed(keys(runner, known.url, "list", "--json")) == live
    stats = as_json(keys(runner, known.url, "stats", "--json"))
    assert (stats["in_flight"], stats["done"], stats["total"]) == (1, 2, 3)
    bare_stats = as_json(keys(runner, bare(known.url), "stats", "--json"))
    assert isinstance(stats["bytes_stored"], int)
    assert isinstance(bare_stats["bytes_stored"], int)
    assert stats["bytes_stored"] < bare_stats["bytes_stored"]  # without the sealing overhead
    purged = as_json(keys(runner, known.url, "purge", "--json"))["purged"]
    assert isinstance(purged, int)
    assert purged == 2 or (known.url.startswith("redis") and purged <= 2)
    assert listed(keys(runner, known.url, "list", "--json")) == live
