"""B16, B18 on trio: an async operation's lease is renewed by a task beside it (a trio system
task), renewed still while its outcome is stored, and stopped from wherever the finishing runs
(`run_to_end`'s shielded scope), so the operation's outcome is stored and replayed. Runs only
where trio is installed (the project's tests run on asyncio)."""

from __future__ import annotations

import pytest

from retrysafe import Identity, open_async_store
from retrysafe._decorator import idempotent

trio = pytest.importorskip("trio")

NAMESPACE = "tests.trio"


def test_b16_an_async_operation_on_trio_renews_its_lease_and_stores_its_outcome() -> None:
    """A call that runs past a third of its lease on trio has its lease renewed, its outcome
    stored, and a repeat replayed: the function ran once."""
    runs: list[float] = []

    async def main() -> None:
        store = open_async_store("memory://")
        identity = Identity(NAMESPACE, "", "k")

        @idempotent(store, key="key", namespace=NAMESPACE, lease=0.6, wait=0)
        async def charge(key: str) -> int:
            claimed = await store.get(identity)
            assert claimed is not None
            await trio.sleep(0.5)  # past the first renewal, due at 0.2 s
            renewed = await store.get(identity)
            assert renewed is not None
            runs.append(renewed.lease_expires_at - claimed.lease_expires_at)
            return len(runs)

        assert await charge("k") == 1
        assert await charge("k") == 1
        await store.aclose()

    trio.run(main)
    assert len(runs) == 1
    assert runs[0] > 0.1  # renewed
