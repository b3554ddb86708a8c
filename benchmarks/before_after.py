"""Run one benchmark against a baseline revision and this checkout, alternating, in one run.

    .venv/bin/python benchmarks/before_after.py --base REV [--runs 3] -- \
        benchmarks/stores.py --rounds 1

The baseline is REV checked out in a temporary git worktree; each run executes the same
benchmark script (this checkout's) once with the baseline's `src/` first on the import path and
once with this checkout's, in alternating order (base first on even runs, after first on odd
ones), so drift in the machine's load hits both sides alike. The benchmark prints Markdown
table rows; the last column of each row (a ratio to the bare alternative, such as `1.40x`) is
collected per row (named by its first `--key-columns` cells) and side. The report gives, per
row, each side's median and its range over the runs (the scatter), and the median's change.
"""

from __future__ import annotations

# Runs git and the benchmark it is given, by design.
# ruff: noqa: S603, S607
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def _rows(output: str, key_columns: int, column: int) -> dict[str, float]:
    """Return each table row's key (its first `key_columns` cells) and the number in cell
    `column` (default the last)."""
    rows: dict[str, float] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or set(cells[0]) <= {"-", ":"}:
            continue
        if not -len(cells) <= column < len(cells):
            continue
        last = _NUMBER.search(cells[column].replace(",", ""))
        if last is None:
            continue
        rows[" | ".join(cells[:key_columns])] = float(last.group())
    return rows


def _run(source: Path, command: list[str], key_columns: int, column: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(source / "src")}
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return _rows(done.stdout, key_columns, column)


def main() -> None:
    """Run the comparison and print a Markdown table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", required=True, help="the baseline revision (commit or tag)")
    parser.add_argument("--runs", type=int, default=3, help="runs per side, alternating")
    parser.add_argument(
        "--key-columns", type=int, default=3, help="leading cells that name a row (default 3)"
    )
    parser.add_argument(
        "--column", type=int, default=-1, help="the cell compared (default -1: the last)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    results: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(base), args.base],
            cwd=ROOT,
            check=True,
        )
        try:
            for run in range(args.runs):
                sides = [("base", base), ("after", ROOT)]
                for side, source in sides if run % 2 == 0 else sides[::-1]:
                    for key, value in _run(source, command, args.key_columns, args.column).items():
                        results[key][side].append(value)
                    print(f"run {run + 1}/{args.runs}: {side} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False
            )
    print(f"| row | base {args.base} | after | change |")
    print("|---|---:|---:|---:|")
    for key, sides in results.items():
        before, after = sides["base"], sides["after"]
        if not before or not after:
            continue
        low, high = statistics.median(before), statistics.median(after)
        print(
            f"| {key} | {low:.2f} ({min(before):.2f}-{max(before):.2f}) "
            f"| {high:.2f} ({min(after):.2f}-{max(after):.2f}) | {(high - low) / low:+.0%} |"
        )


if __name__ == "__main__":
    main()
