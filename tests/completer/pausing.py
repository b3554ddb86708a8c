"""`tests.completer.orders`'s registry, for a `retrysafe complete` process a test stops: at the
start of each finish phase it appends `at:finish KEY` to the file `$PAUSE_LOG`, then waits
(at most 60 s) until the file `$PAUSE_GO` exists."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.completer import orders

__all__ = ["registry"]

registry = orders.registry


def _pause(point: str, key: str) -> None:
    if point != "finish:start":
        return
    with Path(os.environ["PAUSE_LOG"]).open("a") as log:
        log.write(f"at:finish {key}\n")
    go, deadline = Path(os.environ["PAUSE_GO"]), time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


orders.reach = _pause
