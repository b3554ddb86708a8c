"""Generate the sync store faces from the async source.

    python scripts/unasync.py          # rewrite src/retrysafe/stores/_sync/ from _async/
    python scripts/unasync.py --check  # fail if a generated file is stale or a rule is unused

The async code in `src/retrysafe/stores/_async/` is the only hand-written store code; each rule
below maps one async construct to its sync twin. CI runs `--check`, so the two faces cannot drift
and no rule outlives its use.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "retrysafe" / "stores" / "_async"
TARGET = ROOT / "src" / "retrysafe" / "stores" / "_sync"

RULES: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\bawait ", ""),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\baclose\b", "close"),
    (r"\basleep\b", "sleep"),
    (r"\bstores\._async\b", "stores._sync"),
    # AsyncMemoryStore -> MemoryStore, AsyncConnectionPool -> ConnectionPool, and so on.
    (r"\bAsync([A-Z]\w*)", r"\1"),
    (r'^"""Async store faces', '"""Sync store faces'),
    # The Redis store: redis.asyncio.Redis -> redis.Redis, redis.asyncio.retry -> redis.retry.
    (r"\bredis\.asyncio\b", "redis"),
]

HEADER = "# Generated from stores/_async/{name} by scripts/unasync.py; edit the source, not this.\n"


def transform(text: str, used: set[int]) -> str:
    """Apply every rule to `text`, noting which rules matched."""
    for index, (pattern, replacement) in enumerate(RULES):
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        if count:
            used.add(index)
    return text


def main() -> int:
    """Generate or check the sync faces; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check instead of writing")
    check = parser.parse_args().check
    used: set[int] = set()
    stale: list[str] = []
    expected_names = set()
    for source in sorted(SOURCE.glob("*.py")):
        expected_names.add(source.name)
        generated = HEADER.format(name=source.name) + transform(source.read_text(), used)
        target = TARGET / source.name
        if target.exists() and target.read_text() == generated:
            continue
        stale.append(source.name)
        if not check:
            TARGET.mkdir(exist_ok=True)
            target.write_text(generated)
    extra = sorted(p.name for p in TARGET.glob("*.py") if p.name not in expected_names)
    for name in extra:
        if check:
            stale.append(name)
        else:
            (TARGET / name).unlink()
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
