"""Each framework's route cache holds a bounded size, whatever paths and hosts clients send
(B6, B36), on real servers: uvicorn for Starlette and FastAPI, wsgiref for Flask and Django.

An integration routes each (method, host, path) once and remembers the settings it found
(`RouteCache`), before any credential is checked. A request key over 4,096 characters (a long
path or host) is routed on every request instead, with the same result, and never kept: keyed
requests refused 400 cannot fill a process's memory. (Litestar keeps no cache of its own.)
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Hashable

import pytest

from retrysafe.asgi import RouteSettings
from retrysafe.integrations._routes import RouteCache
from tests.integrations.test_routes import Start, is_problem

LONGEST = 4096
"""The longest request key a route cache keeps, in characters of its str and bytes parts."""


def size(key: Hashable) -> int:
    """Return the characters of `key`'s str and bytes parts (method, host, paths)."""
    parts = key if isinstance(key, tuple) else (key,)
    return sum(len(part) for part in parts if isinstance(part, str | bytes))


def cache_holding(marker: str) -> RouteCache:
    """Return the one route cache that remembers a request key naming `marker`."""
    caches = [
        cache
        for cache in gc.get_objects()
        if type(cache) is RouteCache  # not isinstance: that sets up Django's lazy objects
        and any(marker in part for key in cache._settled for part in key if isinstance(part, str))
    ]
    assert len(caches) == 1, caches
    return caches[0]


@pytest.mark.parametrize("framework", ["starlette", "fastapi", "flask", "django"])
def test_b6_b36_long_paths_and_hosts_are_routed_each_time_and_never_held(
    framework: str, start: Start
) -> None:
    """Distinct 6,000-character paths (and hosts) get what their route pattern says, each
    time, and none of them stays in the route cache; a short path is remembered."""
    app = start(framework, routes={"/long/**": RouteSettings(required=True)})
    marker = uuid.uuid4().hex
    for i in range(40):
        response = app.post(f"/long/{marker}-{i}-" + "a" * 6000)
        assert is_problem(response, 400, "key-required"), response.text
    if framework != "django":  # Django's key has no host (ALLOWED_HOSTS refuses others)
        for i in range(20):
            host = f"h{i}-" + "x" * 6000
            response = app.client.post(f"/long/{marker}", headers={"Host": host}, json={})
            assert is_problem(response, 400, "key-required"), response.text
    assert app.post(f"/short-{marker}", str(uuid.uuid4())).status_code in (404, 405)
    assert app.post("/marked", str(uuid.uuid4())).status_code == 201

    sizes = [size(key) for key in cache_holding(f"/short-{marker}")._settled]
    assert max(sizes) <= LONGEST, f"a {max(sizes)}-character request key is held"
    assert sum(sizes) <= 16 * LONGEST  # the short keys of this test only
    assert app.recorder.calls[f"/long/{marker}"] == 0
