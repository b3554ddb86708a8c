"""Build the release as an index would get it, check it, and install it as a user would.

    python scripts/release_check.py                  # `make release-check`; CI runs it
    python scripts/release_check.py --project DIR    # the same on another checkout

1. Build: `uv build` makes the sdist, then the wheel *from the sdist*, so a file the sdist
   lacks breaks the wheel too.
2. `twine check --strict` on both: the metadata and the README as the index will render them.
3. Contents: the wheel holds every file of src/retrysafe (each subpackage, the generated `_sync`
   twin of every `_async` module, `py.typed`) and nothing else, LICENSE in its .dist-info, and
   pyproject's version, license, extras and entry points; the sdist holds LICENSE, CHANGELOG.md,
   README.md and pyproject.toml, and none of a checkout's local directories.
4. Install: an empty venv gets the locked dependencies of every extra from uv's cache
   (`uv sync --frozen --offline`: what `make setup` cached), then the wheel with `[all]`, still
   offline. uv.lock must have been resolved for pyproject's requirements (checked first), so
   the venv holds what the wheel asks for: no more, which would hide a missing requirement.
5. Smoke, in that venv (this file again, with `--smoke`): every module of the package imports,
   and so does every module the package imports from another distribution, inside a function
   too, except the user's own framework's (Django, Flask, FastAPI, Litestar, pytest), which no
   extra brings; `retrysafe.__version__` and `retrysafe --version` say pyproject's version.

tests/packaging/test_core_install.py is the other half: the wheel with no extra at all works and
names the extra each face lacks. Any problem exits 1, with one line for each.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import email.message
import email.parser
import importlib
import importlib.util
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The user's own app frameworks and test runner (asgiref comes with Django), which the faces that
# run inside them import and no extra brings: the smoke test may find them missing.
FRAMEWORKS = frozenset({"django", "asgiref", "fastapi", "flask", "werkzeug", "litestar", "pytest"})
SDIST_FILES = ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "PKG-INFO")
# A checkout's local state, never part of a release (and .venv*, __pycache__).
LOCAL_DIRS = frozenset(
    {".git", ".tools", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "site"}
)
OFFLINE = "offline from uv's cache (make setup fills it; make lock if a dependency changed)"


class ReleaseCheckError(Exception):
    """A step of the release check failed; the message says which and why."""


def run(
    command: Sequence[str | Path], what: str, *, cwd: Path | None = None, env: dict[str, str]
) -> str:
    """Run `command`; its output, or ReleaseCheckError naming `what` with the output's end."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-3000:]
        raise ReleaseCheckError(f"{what} failed (exit {done.returncode}):\n{output}")
    return done.stdout


def find_uv() -> str:
    """The project's pinned uv (`make` exports RETRYSAFE_UV), else the one in .tools or on PATH."""
    for uv in (os.environ.get("RETRYSAFE_UV"), str(ROOT / ".tools/bin/uv"), shutil.which("uv")):
        if uv and Path(uv).exists():
            return uv
    raise ReleaseCheckError("uv not found: `make setup` installs the pinned uv into .tools/")


def required_files(src: Path) -> dict[str, str]:
    """Each file the wheel must hold, with what to add to the message if it is missing."""
    sources = [
        path.relative_to(src).as_posix()
        for path in (src / "retrysafe").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    required = dict.fromkeys(sources, "")
    # These even if the source tree lost them.
    required.setdefault("retrysafe/py.typed", ": type checkers would ignore the package")
    for name in sources:
        if "/_async/" in name:
            twin = name.replace("/_async/", "/_sync/")
            required.setdefault(twin, f", generated from {name} by scripts/unasync.py")
    return required


def metadata_problems(
    metadata: email.message.Message, entry_points: configparser.ConfigParser, meta: dict[str, Any]
) -> list[str]:
    """Where the wheel's METADATA and entry points differ from pyproject's [project] table."""
    expected = {
        "Name": "retrysafe",
        "Version": meta["version"],
        "License-Expression": meta["license"],
        "Requires-Python": meta["requires-python"],
    }
    problems = [
        f"the wheel's METADATA says {field}: {metadata[field]}, not {value}"
        for field, value in expected.items()
        if metadata[field] != value
    ]
    extras = metadata.get_all("Provides-Extra") or []
    if set(extras) != set(meta["optional-dependencies"]):
        problems.append(f"the wheel's extras are {extras}, not pyproject's")
    for group, points in {"console_scripts": meta["scripts"], **meta["entry-points"]}.items():
        found = dict(entry_points[group]) if entry_points.has_section(group) else {}
        if found != points:
            problems.append(f"the wheel's [{group}] entry points are {found}, not {points}")
    return problems


def wheel_problems(wheel: Path, project: Path, meta: dict[str, Any]) -> list[str]:
    """What the wheel lacks, or has that it should not, against the source tree and pyproject's
    [project] table (`meta`)."""
    info = f"retrysafe-{meta['version']}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.optionxform = str  # type: ignore[assignment,method-assign]
        entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
        licensed = f"{info}/licenses/LICENSE"
        license_text = archive.read(licensed) if licensed in names else None
    required = required_files(project / "src")
    problems = [
        f"the wheel lacks {name}{why}" for name, why in required.items() if name not in names
    ]
    problems += [
        f"the wheel has {name}, which is not in src/retrysafe"
        for name in names - required.keys()
        if not name.startswith(f"{info}/")
    ]
    license_file = project / "LICENSE"
    if not license_file.exists() or license_text != license_file.read_bytes():
        problems.append(f"the wheel's {licensed} is missing or is not the project's LICENSE")
    return sorted(problems) + metadata_problems(metadata, entry_points, meta)


def sdist_problems(sdist: Path) -> list[str]:
    """What the sdist lacks, or carries from a checkout's local state."""
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    problems = [f"the sdist lacks {name}" for name in SDIST_FILES if name not in names]
    for name in sorted(names):
        parts = Path(name).parts
        if LOCAL_DIRS.intersection(parts) or any(
            part.startswith(".venv") or part == "__pycache__" for part in parts
        ):
            problems.append(f"the sdist carries {name}, a checkout's local file")
    return problems


def lock_problems(project: Path, meta: dict[str, Any]) -> list[str]:
    """Whether uv.lock was resolved for pyproject's requirements (their names, per extra)."""
    lock = tomllib.loads((project / "uv.lock").read_text(encoding="utf-8"))
    (locked,) = (entry for entry in lock["package"] if entry["name"] == "retrysafe")
    marker = re.compile(r"extra == '([^']+)'")
    resolved = {
        (entry["name"], found.group(1) if (found := marker.search(entry.get("marker", ""))) else "")
        for entry in locked["metadata"]["requires-dist"]
    }
    groups = {"": meta.get("dependencies", []), **meta.get("optional-dependencies", {})}
    declared = {
        (re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;@]", spec, maxsplit=1)[0]).lower(), extra)
        for extra, specs in groups.items()
        for spec in specs
    }
    if resolved == declared:
        return []
    return ["uv.lock was not resolved for pyproject.toml's dependencies and extras: make lock"]


def build(uv: str, project: Path, dist: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """Build the sdist, then the wheel from it, into `dist`; check both."""
    # Not --quiet: on a failure, what the build backend said is the message.
    run([uv, "build", "--out-dir", dist, project], "uv build", env=env)
    (sdist,) = dist.glob("retrysafe-*.tar.gz")
    (wheel,) = dist.glob("retrysafe-*.whl")
    twine = [sys.executable, "-m", "twine", "--no-color", "check", "--strict"]
    run([*twine, str(sdist), str(wheel)], "twine check", env=env)
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    problems = wheel_problems(wheel, project, meta) + sdist_problems(sdist)
    if problems := problems + lock_problems(project, meta):
        raise ReleaseCheckError("\n".join(problems))
    return sdist, wheel


def install(uv: str, project: Path, wheel: Path, venv: Path, env: dict[str, str]) -> None:
    """An empty venv at `venv` with the wheel and every extra, all from uv's cache."""
    run([uv, "venv", "--quiet", "--python", sys.executable, venv], "uv venv", env=env)
    sync = [uv, "sync", "--quiet", "--frozen", "--offline", "--all-extras", "--no-default-groups"]
    into = {**env, "UV_PROJECT_ENVIRONMENT": str(venv)}
    run(
        [*sync, "--no-install-project"],
        f"the locked dependencies, {OFFLINE}",
        cwd=project,
        env=into,
    )
    pip = [uv, "pip", "install", "--quiet", "--offline", "--python", str(venv / "bin" / "python")]
    run([*pip, f"{wheel}[all]"], f"the wheel with [all], {OFFLINE}", env=env)


def check(project: Path) -> None:
    """Every step above, on `project`; ReleaseCheckError at the first step that fails."""
    version = tomllib.loads((project / "pyproject.toml").read_text())["project"]["version"]
    uv, started = find_uv(), time.monotonic()
    if importlib.util.find_spec("twine") is None:
        raise ReleaseCheckError(
            f"twine is not installed for {sys.executable}: it is in pyproject's dev group "
            "(`make setup`; `make lock` first if uv.lock does not have it yet)"
        )
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    with tempfile.TemporaryDirectory(prefix="retrysafe-release-") as temporary:
        folder = Path(temporary)
        sdist, wheel = build(uv, project, folder / "dist", env)
        print(f"built, twine-checked and inspected {sdist.name} and {wheel.name}")
        venv = folder / "venv"
        install(uv, project, wheel, venv, env)
        # -I: the venv's own packages only, neither this script's folder nor PYTHONPATH.
        smoke = [str(venv / "bin" / "python"), "-I", str(Path(__file__).resolve())]
        print(run([*smoke, "--smoke", version], "the smoke test", cwd=folder, env=env).strip())
        printed = run([venv / "bin" / "retrysafe", "--version"], "retrysafe --version", env=env)
        if printed != f"retrysafe {version}\n":
            raise ReleaseCheckError(f"retrysafe --version printed {printed!r}, not {version}")
    print(f"release check ok: retrysafe {version} ({time.monotonic() - started:.1f} s)")


def _framework(error: BaseException | None) -> str | None:
    """The user's framework whose absence caused `error` (through its causes), if any."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name:
            top = error.name.split(".")[0]
            if top in FRAMEWORKS:
                return top
        error = error.__cause__ or error.__context__
    return None


def _imported_elsewhere(source: str) -> set[str]:
    """The modules of other distributions `source` imports, except under TYPE_CHECKING."""
    found: set[str] = set()
    pending: list[ast.AST] = [ast.parse(source)]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        pending.extend(ast.iter_child_nodes(node))
    ours = {"retrysafe", "__future__", *sys.stdlib_module_names}
    return {name for name in found if name.split(".")[0] not in ours}


def smoke(version: str) -> None:
    """Inside the installed venv: import everything the package and its extras provide."""
    import retrysafe  # noqa: PLC0415 - the installed wheel's, in the venv this runs in

    problems: list[str] = []
    if retrysafe.__version__ != version:
        problems.append(f"retrysafe.__version__ is {retrysafe.__version__!r}, not {version!r}")
    # A package that fails to import is reported by the loop below, not by the walk.
    walk = pkgutil.walk_packages(retrysafe.__path__, "retrysafe.", onerror=lambda _: None)
    modules = ["retrysafe", *(info.name for info in walk)]
    skipped: set[str] = set()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:  # every failure is reported, then the next module
            if (framework := _framework(error)) is None:
                problems.append(f"import {name}: {type(error).__name__}: {error}")
            skipped.add(framework or "")
    elsewhere: set[str] = set()
    for path in Path(retrysafe.__file__ or "").parent.rglob("*.py"):
        elsewhere |= _imported_elsewhere(path.read_text(encoding="utf-8"))
    elsewhere = {name for name in elsewhere if name.split(".")[0] not in FRAMEWORKS}
    for name in sorted(elsewhere):
        try:
            importlib.import_module(name)
        except Exception as error:  # every failure is reported, then the next module
            problems.append(f"import {name} (retrysafe imports it): {error}")
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(
        f"imported {len(modules)} modules of retrysafe and {len(elsewhere)} it imports from its"
        f" dependencies (not those needing {', '.join(sorted(skipped))}: no extra brings them)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="the checkout to release")
    parser.add_argument("--smoke", metavar="VERSION", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        smoke(args.smoke)
        return
    try:
        check(args.project.resolve())
    except ReleaseCheckError as failure:
        print(f"release check FAILED: {failure}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
