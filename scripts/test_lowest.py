"""Run the tests with every dependency of retrysafe at the lowest version pyproject.toml allows.

    scripts/test_lowest.py UV PYTHON [-- PYTEST_ARGS...]     (make test-lowest)

uv.lock holds the newest versions, and CI tests those; a user whose other packages hold one of
ours back gets an older one, down to the floor that pyproject.toml declares. This checks that
the floors are true: it builds `.venv-lowest` from uv.lock (every extra, the dev group), then
installs each direct dependency of the core and the extras at the lowest version its range
allows (`uv pip compile --resolution lowest-direct`), with the test tools that must move with
them (FastAPI with Starlette, the OpenTelemetry SDK with its API), and runs the tests as
`make test` does. Slow (a whole test run), so it is not part of CI: run it when a floor or a
dependency changes, and before a release.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-lowest"
# Test tools whose own requirements follow a dependency of ours: unpinned, so that uv picks
# versions that fit the floors (the newest FastAPI needs the newest Starlette).
COMPANIONS = ["fastapi", "opentelemetry-sdk"]


def direct_requirements() -> list[str]:
    """Return the requirements of the core and of every extra, without retrysafe's own."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        found += [r for r in extra if not r.startswith("retrysafe")]
    return sorted(set(found))


def name_of(requirement: str) -> str:
    """Return the normalized distribution name of a requirement (`psycopg[binary]>=3.2`)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    if name is None:
        raise SystemExit(f"cannot read the requirement {requirement!r} in pyproject.toml")
    return re.sub(r"[-_.]+", "-", name[0]).lower()


def lowest(uv: str, python: str, requirements: list[str]) -> list[str]:
    """Return `name[extras]==version` for each requirement, at the lowest version that resolves
    (with its extras: psycopg[binary] brings its binary part at the same version)."""
    with tempfile.TemporaryDirectory() as tmp:
        wanted = Path(tmp) / "lowest.in"
        wanted.write_text("\n".join(requirements) + "\n")
        compiled = subprocess.run(
            [uv, "pip", "compile", "--quiet", "--python", python,
             "--resolution", "lowest-direct", "--no-header", "--no-annotate", str(wanted)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    extras = {name_of(r): re.search(r"\[[^]]*\]", r) for r in requirements}
    pins = []
    for line in compiled.splitlines():
        name, _, version = line.strip().partition("==")
        if version and name_of(name) in extras:
            extra = extras[name_of(name)]
            pins.append(f"{name}{extra[0] if extra else ''}=={version}")
    return pins


def main() -> int:
    """Build .venv-lowest, install the floors, run pytest; return its exit status."""
    uv, python, *rest = sys.argv[1:]
    pytest_args = rest[1:] if rest[:1] == ["--"] else rest
    environment = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(VENV)}
    subprocess.run(
        [uv, "sync", "--quiet", "--frozen", "--all-extras", "--python", python],
        check=True, cwd=ROOT, env=environment,
    )  # fmt: skip
    venv_python = str(VENV / "bin" / "python")
    pins = lowest(uv, python, direct_requirements())
    print("the floors:", " ".join(pins), flush=True)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", venv_python, *pins, *COMPANIONS],
        check=True, cwd=ROOT,
    )  # fmt: skip
    # What else the dev group needs newer than a floor (the docs' tools, say) is shown, not
    # fatal: the tests say whether it matters.
    subprocess.run([uv, "pip", "check", "--python", venv_python], check=False, cwd=ROOT)
    command = [venv_python, "scripts/services.py", "--", venv_python, "-m", "pytest", *pytest_args]
    return subprocess.run(command, check=False, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
