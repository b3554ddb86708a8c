"""The project's limit on a module's length (CONTRIBUTING.md): no hand-written module under
`src` is over 400 lines, so each stays one subject a reader can hold. The sync twins that
`scripts/unasync.py` generates (`_sync/` folders) follow their async sources and are left out."""

from __future__ import annotations

from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src"
LONGEST = 400


def test_no_hand_written_module_is_over_400_lines() -> None:
    modules = [path for path in SOURCE.rglob("*.py") if "_sync" not in path.parts]
    assert len(modules) > 100  # the tree was found
    lengths = {path.relative_to(SOURCE): len(path.read_text().splitlines()) for path in modules}
    assert {path: n for path, n in lengths.items() if n > LONGEST} == {}
