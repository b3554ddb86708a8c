"""Generate the sync faces of the stores and of transactional mode from their async source.

    python scripts/unasync.py          # rewrite every _sync/ package from its _async/ source
    python scripts/unasync.py --check  # fail if a generated file is stale or a rule is unused

The async code in `src/retrysafe/stores/_async/` and `src/retrysafe/transactions/_async/` is
the only hand-written I/O code with two colours; each rule below maps one async construct to
its sync twin. CI runs `--check`, so the two faces cannot drift and no rule outlives its use.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "retrysafe"
# Each package whose `_async/` is the source of a generated `_sync/`.
PACKAGES = ("stores", "transactions")

# Async functions take an `a` (`aclose`, `arun_phases`); their sync twins take none.
A_PREFIXED = (
    "close",
    "sleep",
    "begin_claim",
    "rollback",
    "run_phases",
    "run_phases_on",
    "call_phase",
    "insert_if_absent",
    "update_by_key",
    "delete_by_key",
    "load_scope_secret",
    "load_secret_of",
)
# Module-level dispatchers come in pairs: `async_backend` and `sync_backend`, and so on.
DISPATCHERS = ("backend", "records", "executor", "pinned_exchange")

RULES: list[tuple[str, str]] = [
    # SQLAlchemy: an async connection's DB-API connection is awaited, a sync one's is an
    # attribute (`(await conn.get_raw_connection()).x` -> `conn.connection.x`). Before `await`.
    (r"\(await (\w+)\.get_raw_connection\(\)\)", r"\1.connection"),
    (r"\basync def\b", "def"),
    (r"\bawait ", ""),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\benter_async_context\b", "enter_context"),
    (r"\basynccontextmanager\b", "contextmanager"),
    *((rf"\ba{name}\b", name) for name in A_PREFIXED),
    *((rf"\basync_{name}\b", f"sync_{name}") for name in DISPATCHERS),
    (r"\b(stores|transactions)\._async\b", r"\1._sync"),
    # AsyncMemoryStore -> MemoryStore, AsyncConnectionPool -> ConnectionPool, and so on.
    (r"\bAsync([A-Z]\w*)", r"\1"),
    # The Redis store: redis.asyncio.Redis -> redis.Redis, redis.asyncio.retry -> redis.retry.
    (r"\bredis\.asyncio\b", "redis"),
    # SQLAlchemy: AsyncSession -> Session lives in sqlalchemy.orm.
    (r"\bsqlalchemy\.ext\.asyncio\b", "sqlalchemy.orm"),
    # MySQL: aiomysql is PyMySQL's async twin, with the same names (and PyMySQL's errors).
    (r"\baiomysql\b", "pymysql"),
]

# Generated files are neither linted nor formatted: they follow their source line for line.
HEADER = (
    "# Generated from {source} by scripts/unasync.py; edit the source, not this.\n"
    "# ruff: noqa\n"
    "# fmt: off\n"
)


def transform(text: str, used: set[int]) -> str:
    """Apply every rule to `text`, noting which rules matched."""
    for index, (pattern, replacement) in enumerate(RULES):
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        if count:
            used.add(index)
    return text


def generate(package: str, used: set[int], *, check: bool) -> list[str]:
    """Generate (or check) one package's `_sync/` from its `_async/`; return the stale files."""
    source_dir, target_dir = PACKAGE / package / "_async", PACKAGE / package / "_sync"
    stale: list[str] = []
    expected_names = set()
    for source in sorted(source_dir.glob("*.py")):
        expected_names.add(source.name)
        header = HEADER.format(source=f"{package}/_async/{source.name}")
        generated = header + transform(source.read_text(), used)
        target = target_dir / source.name
        if target.exists() and target.read_text() == generated:
            continue
        stale.append(f"{package}/_sync/{source.name}")
        if not check:
            target_dir.mkdir(exist_ok=True)
            target.write_text(generated)
    for extra in sorted(p for p in target_dir.glob("*.py") if p.name not in expected_names):
        stale.append(f"{package}/_sync/{extra.name}")
        if not check:
            extra.unlink()
    return stale


def main() -> int:
    """Generate or check the sync faces; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check instead of writing")
    check = parser.parse_args().check
    used: set[int] = set()
    stale = [name for package in PACKAGES for name in generate(package, used, check=check)]
    unused = [RULES[i][0] for i in range(len(RULES)) if i not in used]
    if unused:
        print(f"unasync: rules that matched nothing (remove them): {unused}", file=sys.stderr)
        return 1
    if check and stale:
        print(f"unasync: stale sync files, run scripts/unasync.py: {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
