"""B7: a memory:// store copied into a forked worker is a store of its own there; the child says
so once (a WARNING on `retrysafe.stores`), and a process that forks without one says nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent(
    """
    import logging, os, sys
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    import retrysafe
    store = retrysafe.open_store("memory://") if sys.argv[1] == "store" else None
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    """
)


@pytest.mark.parametrize(("made", "warnings"), [("store", 2), ("none", 0)])
def test_b7_a_memory_store_copied_by_a_fork_warns_in_the_child(made: str, warnings: int) -> None:
    """Each forked child of a process with a live memory store warns once; none without."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, made],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "memory:// store" in line]
    assert len(lines) == warnings, done.stderr
    assert all(line.startswith("retrysafe.stores WARNING") for line in lines)
