"""`manage.py retrysafe_keys`: the keys CLI inside a Django project, on its RETRYSAFE["STORE"].

Each test writes a real project (a `manage.py` and a `settings.py` listing
`"retrysafe.integrations"` in `INSTALLED_APPS`) into its own directory and runs it as a
subprocess, as a user would: `python manage.py ...` and `django-admin` (`python -m django`)
with `DJANGO_SETTINGS_MODULE`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrysafe import Identity, State, open_store
from tests.conftest import fresh_store_url

MANAGE_PY = """\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""
SETTINGS_PY = """\
SECRET_KEY = "retrysafe-tests"
INSTALLED_APPS = {apps!r}
RETRYSAFE = {{"STORE": {store!r}}}
"""
SECONDS = 120


def project(
    directory: Path, store: str, apps: tuple[str, ...] = ("retrysafe.integrations",)
) -> Path:
    """Write a Django project whose RETRYSAFE["STORE"] is `store` (made if missing: the keys
    commands never create a store) and whose INSTALLED_APPS are `apps`; return its
    directory."""
    made = open_store(store)
    try:
        made.stats()  # a SQLite store makes its file on first use
    finally:
        made.close()
    directory.mkdir(exist_ok=True)
    (directory / "manage.py").write_text(MANAGE_PY)
    (directory / "settings.py").write_text(SETTINGS_PY.format(store=store, apps=list(apps)))
    return directory


def manage(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `python manage.py ARGUMENTS` in the project, without RETRYSAFE_STORE set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RETRYSAFE_STORE", "DJANGO_SETTINGS_MODULE")
    }
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=SECONDS,
        check=False,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a command printed, once it exited 0."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store holding a done record (k-done) and one in flight (k-running)."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        store = open_store(url)
        try:
            done = store.claim(
                Identity("payments", "tenant-a", "k-done"), "fp", lease=30, retention=3600
            )
            store.complete(done.record.identity, done.record.token, b'{"id": 1}', retention=3600)
            store.claim(
                Identity("payments", "tenant-b", "k-running"), "fp", lease=600, retention=3600
            )
        finally:
            store.close()
        yield url


def test_b35_manage_py_retrysafe_keys_runs_the_keys_cli_on_the_projects_store(
    tmp_path: Path, store_url: str
) -> None:
    """list, show, stats, delete and purge work on RETRYSAFE["STORE"] with no --store, and
    show each record's scope with its key."""
    site = project(tmp_path / "site", store_url)
    listed = as_json(manage(site, "retrysafe_keys", "list", "--json"))["records"]
    assert {(r["key"], r["scope"], r["state"]) for r in listed} == {
        ("k-done", "tenant-a", "done"),
        ("k-running", "tenant-b", "in_flight"),
    }
    shown = as_json(manage(site, "retrysafe_keys", "show", "k-done", "--json"))
    assert (shown["scope"], shown["state"]) == ("tenant-a", "done")
    stats = as_json(manage(site, "retrysafe_keys", "stats", "--json"))
    assert (stats["done"], stats["in_flight"], stats["total"]) == (1, 1, 2)
    table = manage(site, "retrysafe_keys", "list")
    assert table.returncode == 0, table.stderr
    assert "k-done" in table.stdout
    assert "tenant-b" in table.stdout
    deleted = manage(site, "retrysafe_keys", "delete", "k-done", "--scope", "tenant-a")
    assert deleted.returncode == 0, deleted.stderr
    assert "Deleted done record 'k-done'" in deleted.stdout
    assert as_json(manage(site, "retrysafe_keys", "purge", "--json")) == {"purged": 0}
    store = open_store(store_url)
    try:
        assert store.get(Identity("payments", "tenant-a", "k-done")) is None
        running = store.get(Identity("payments", "tenant-b", "k-running"))
        assert running is not None
        assert running.state is State.IN_FLIGHT
    finally:
        store.close()


def test_manage_py_retrysafe_keys_store_option_and_errors_are_the_clis(tmp_path: Path) -> None:
    """--store on the command line wins over the settings; a missing key is one line on
    stderr and exit 1; a bad option is a usage error, exit 2; help shows the command."""
    site = project(tmp_path / "site", f"sqlite:///{tmp_path / 'project.db'}")
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        claim = other.claim(Identity("jobs", "s", "elsewhere"), "fp", lease=30, retention=3600)
        other.complete(claim.record.identity, claim.record.token, b"ok", retention=3600)
    finally:
        other.close()
    store = f"sqlite:///{tmp_path / 'other.db'}"
    listed = as_json(manage(site, "retrysafe_keys", "list", "--store", store, "--json"))
    assert [r["key"] for r in listed["records"]] == ["elsewhere"]
    joined = as_json(manage(site, "retrysafe_keys", "list", f"--store={store}", "--json"))
    assert [r["key"] for r in joined["records"]] == ["elsewhere"]
    assert as_json(manage(site, "retrysafe_keys", "list", "--json")) == {"records": []}
    missing = manage(site, "retrysafe_keys", "show", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: No live record for key 'nope'."
    assert manage(site, "retrysafe_keys", "list", "--bogus").returncode == 2
    helped = manage(site, "retrysafe_keys", "list", "--help")
    assert helped.returncode == 0
    assert "manage.py retrysafe_keys list" in helped.stdout
    assert "retrysafe_keys" in manage(site, "help").stdout


def test_django_admin_retrysafe_keys_and_check_with_the_app_installed(tmp_path: Path) -> None:
    """django-admin finds the command through DJANGO_SETTINGS_MODULE, and `manage.py check`
    passes with "retrysafe.integrations" in INSTALLED_APPS (it adds no models)."""
    site = project(tmp_path / "site", f"sqlite:///{tmp_path / 'project.db'}")
    env = {k: v for k, v in os.environ.items() if k != "RETRYSAFE_STORE"}
    env.update(DJANGO_SETTINGS_MODULE="settings", PYTHONPATH=str(site))
    result = subprocess.run(
        [sys.executable, "-m", "django", "retrysafe_keys", "stats", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SECONDS,
        check=False,
    )
    assert as_json(result)["total"] == 0
    checked = manage(site, "check")
    assert checked.returncode == 0, checked.stderr
    assert "no issues" in checked.stdout


def test_the_app_is_labelled_retrysafe_beside_a_projects_own_integrations_app(
    tmp_path: Path,
) -> None:
    """A project with an app of its own named `integrations` installs retrysafe's beside it:
    Django starts (the labels differ: `integrations` and `retrysafe`), `check` passes, and the
    keys command runs."""
    site = project(
        tmp_path / "site",
        f"sqlite:///{tmp_path / 'project.db'}",
        apps=("integrations", "retrysafe.integrations"),
    )
    (site / "integrations").mkdir()
    (site / "integrations" / "__init__.py").write_text("")
    labels = manage(
        site,
        "shell",
        "-c",
        "from django.apps import apps; print(sorted(c.label for c in apps.get_app_configs()))",
    )
    assert labels.returncode == 0, labels.stderr
    assert labels.stdout.strip().splitlines()[-1] == "['integrations', 'retrysafe']"
    checked = manage(site, "check")
    assert checked.returncode == 0, checked.stderr
    assert as_json(manage(site, "retrysafe_keys", "stats", "--json"))["total"] == 0
