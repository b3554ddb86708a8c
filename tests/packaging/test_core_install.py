"""The published core: a wheel installed with no extras works and names the extras it lacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _uv() -> str:
    uv = os.environ.get("RETRYSAFE_UV") or shutil.which("uv") or str(ROOT / ".tools/bin/uv")
    if not Path(uv).exists():
        pytest.fail("uv not found: run the tests through `make test`, which installs it")
    return uv


def test_core_wheel_installs_without_cli_dependencies(tmp_path: Path) -> None:
    """A wheel installed into an empty venv with no extras runs the stores, middleware and
    decorator, brings none of the CLI's dependencies, and names the missing extra per face."""
    uv = _uv()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": ""}
    dist = tmp_path / "dist"
    subprocess.run(
        [uv, "build", "--wheel", "--quiet", "--out-dir", dist, ROOT], check=True, env=env
    )
    (wheel,) = dist.glob("retrysafe-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, venv], check=True, env=env)
    python = venv / "bin" / "python"
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", python, wheel], check=True, env=env
    )
    done = subprocess.run(
        [python, Path(__file__).with_name("core_check.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "core ok"
