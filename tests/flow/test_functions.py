"""B19 for `@idempotent`: a result the store did not take is held, returned to repeats, and
stored late, with the store cut from inside the function right after its effect."""

from __future__ import annotations

import anyio
import pytest

from retrysafe import State, open_async_store, open_store
from retrysafe._decorator import idempotent
from tests.flow.conftest import WAIT_SECONDS, Gap


def test_b19_sync_function_result_is_held_then_stored(gap: Gap) -> None:
    """The caller gets the result; a repeat in the gap gets the held result; the result lands
    once the store is back, and a repeat replays it from the store: the function ran once."""
    store = open_store(gap.url)
    runs: list[str] = []

    @idempotent(store, key="key")
    def charge(key: str) -> dict[str, int]:
        runs.append(key)
        gap.relay.cut()
        return {"charged": len(runs)}

    try:
        assert charge("k") == {"charged": 1}
        assert gap.relay.is_cut
        assert charge("k") == {"charged": 1}  # the store is unreachable: held
        assert gap.state("k") is State.IN_FLIGHT
        gap.relay.restore()
        gap.wait_for_done("k")
        assert charge("k") == {"charged": 1}
        assert runs == ["k"]
    finally:
        store.close()


@pytest.mark.anyio
async def test_b19_async_function_result_is_held_then_stored(gap: Gap) -> None:
    """The async twin: the held result answers repeats, and a task stores it late."""
    store = open_async_store(gap.url)
    direct = open_async_store(gap.direct_url)
    runs: list[str] = []

    @idempotent(store, key="key")
    async def charge(key: str) -> dict[str, int]:
        runs.append(key)
        gap.relay.cut()
        return {"charged": len(runs)}

    async def state() -> State | None:
        found = [r for r in await direct.list_records() if r.identity.key == "k"]
        return found[0].state if found else None

    try:
        assert await charge("k") == {"charged": 1}
        assert await charge("k") == {"charged": 1}  # held
        assert await state() is State.IN_FLIGHT
        gap.relay.restore()
        for _ in range(int(WAIT_SECONDS / 0.01)):  # bounded polling for the late completion
            if await state() is State.DONE:
                break
            await anyio.sleep(0.01)
        assert await state() is State.DONE
        assert await charge("k") == {"charged": 1}
        assert runs == ["k"]
    finally:
        await store.aclose()
        await direct.aclose()
