"""SPEC B35 beyond `keys`: what `outbox-relay --parked` and `complete` print of stored or remote
text (a topic, a publisher's error, a step's error) is literal, control characters written as
escapes; and `console --token-file` warns about a token file other users may read."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrysafe import Identity, transactions
from retrysafe.cli import app
from retrysafe.cli.console import read_token
from retrysafe.outbox import OutboxMessage, Relay
from tests.completer import orders
from tests.completer.conftest import Shop, provider, shop  # noqa: F401 - the fixtures

HOSTILE = "\x1b]0;owned\x07\x1b[2J\nFAKE: 0 parked messages"
ESCAPED = "\\x1b]0;owned\\x07\\x1b[2J\\nFAKE: 0 parked messages"
RAW = ("\x1b", "\x07")


def _refuse_hostile(message: OutboxMessage) -> None:
    """A publisher whose broker refuses the hostile topic, quoting it in its error."""
    if message.topic != "orders.ok":
        raise LookupError(f"no queue takes {message.topic}")


def test_b35_outbox_relay_parked_prints_topics_and_errors_literally(tmp_path: Path) -> None:
    """A parked message whose topic (and so its last error) holds terminal controls and a
    line feed is listed on one line, with them as escapes."""
    path = tmp_path / "app.db"
    with (
        contextlib.closing(sqlite3.connect(path)) as conn,
        transactions.sqlite(conn, identity=Identity("orders", "t", "o-1"), fingerprint="f") as tx,
    ):
        tx.outbox.add(f"orders.{HOSTILE}", b"{}")
        tx.outbox.add("orders.ok", b"{}")
        tx.complete(b"{}")
    with Relay(f"sqlite:///{path}", _refuse_hostile, max_attempts=2) as relay:
        for _ in range(3):
            with contextlib.suppress(LookupError):
                relay.run_once()
        assert len(relay.parked_messages()) == 1
    command = ["outbox-relay", "--store", f"sqlite:///{path}", "--to", "amqp://x/", "--parked"]
    listed = CliRunner().invoke(app, command)
    assert listed.exit_code == 0, listed.output
    assert not any(raw in listed.stdout for raw in RAW)
    lines = listed.stdout.splitlines()
    assert lines[-1] == "1 parked messages"
    (parked,) = lines[:-1]
    assert parked.count(f"orders.{ESCAPED}") == 2  # the topic, and in the error


def test_b35_complete_logs_a_step_error_literally(
    shop: Shop,  # noqa: F811 - the fixture imported above
) -> None:
    """An operation whose step error quotes a key with terminal controls is reported on
    stderr by `complete` with them as escapes: the failure and the mark needing attention
    (the stored error has its line feeds as spaces)."""
    key = f"order-{HOSTILE}"
    database = shop.database
    blocker = database.create_table("rs_block", "reason TEXT")
    database.execute(f"INSERT INTO {blocker} VALUES ('stock check')")  # noqa: S608 - a test table
    request = orders.request_of(key, blocker=blocker, **shop.spec())
    conn = database.connect()
    try:
        with pytest.raises(RuntimeError, match="blocked"):
            orders.registry.run(
                conn, Identity("orders", "tenant-a", key), request, table=database.table
            )
    finally:
        conn.close()
    ran = CliRunner().invoke(
        app,
        [
            *("complete", "--store", database.url, "--app", "tests.completer.orders:registry"),
            *("--once", "--max-attempts", "1"),
        ],
    )
    assert ran.exit_code == 0, ran.output
    assert "needs attention 1" in ran.stdout
    assert not any(raw in ran.stderr for raw in RAW)
    failed, marked = ran.stderr.splitlines()
    stored = ESCAPED.replace("\\n", " ")
    error = f"RuntimeError: order order-{stored} is blocked"
    assert failed.startswith("WARNING: Completing ")
    assert error in failed
    assert marked.startswith("ERROR: Operation ")
    assert error in marked


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX's")
def test_b35_console_warns_about_a_token_file_others_may_read(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A token file readable by the group or others is accepted with a warning naming the
    chmod to run; one readable by its owner alone, silently."""
    token = tmp_path / "console.token"
    token.write_text("a-token-of-sixteen-or-more\n", encoding="utf-8")
    token.chmod(0o644)
    assert read_token(token) == "a-token-of-sixteen-or-more"
    warned = capfd.readouterr().err
    assert "warning: the token file" in warned
    assert "mode 0644" in warned
    assert f"chmod 600 {token}" in " ".join(warned.split())
    token.chmod(0o600)
    assert read_token(token) == "a-token-of-sixteen-or-more"
    assert capfd.readouterr().err == ""
