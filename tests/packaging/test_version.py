"""The version has one source, pyproject.toml: the metadata, `__version__` and the CLI agree.

A release bumps `version` in pyproject.toml and nothing else; these tests fail if a second copy
of the number appears in the package, or if what users see disagrees with the source.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import retrysafe

ROOT = Path(__file__).resolve().parents[2]


def _declared() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project.get("dynamic", []), "the version is written in pyproject"
    return str(project["version"])


def test_metadata_version_and_cli_all_say_the_pyproject_version() -> None:
    """pyproject's version is the installed metadata's, `retrysafe.__version__` and what
    `retrysafe --version` prints (stale metadata here means `make setup` was not rerun)."""
    declared = _declared()
    assert metadata.version("retrysafe") == declared, "the venv's install is stale: make setup"
    assert retrysafe.__version__ == declared
    command = Path(sys.executable).with_name("retrysafe")
    done = subprocess.run(
        [command, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"retrysafe {declared}\n"


def test_no_module_writes_the_version_itself() -> None:
    """No module of the package assigns `__version__` or carries the version's number as a
    string: a second copy would drift from pyproject.toml at the next release."""
    declared = _declared()
    assigned = re.compile(r"^[ \t]*__version__[ \t]*(?::[^=\n]*)?=", re.MULTILINE)
    number = re.compile(rf"""["']{re.escape(declared)}["']""")
    for path in sorted((ROOT / "src" / "retrysafe").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert not assigned.search(text), f"{path.relative_to(ROOT)} assigns __version__"
        assert not number.search(text), f"{path.relative_to(ROOT)} writes {declared!r}"


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    """The lazy `__version__` does not make other missing names exist."""
    assert not hasattr(retrysafe, "__versoin__")
    assert not hasattr(retrysafe, "open_stores")
