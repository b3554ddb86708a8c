"""Fill a store through retrysafe 0.1.0 itself: the previous release's records for B39's tests.

Run under 0.1.0's code, from the repository's root (see README.md in this folder):

    PYTHONPATH=<0.1.0's src>:. PYTHONHASHSEED=0 python tests/upgrade/data/fill_010.py URL \
        [--dump FILE]

It sends `cases.REQUESTS` through 0.1.0's ASGI middleware (with `cases.authenticated` naming
the users) and calls two functions under 0.1.0's `@idempotent` with the int-set and str-set
models. `--dump` then writes what a PostgreSQL table or a Redis prefix holds, as stored, to a
JSON file that `tests/upgrade/conftest.py` loads into a fresh table or prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import retrysafe
from retrysafe import idempotent, open_async_store, open_store
from retrysafe.asgi import IdempotencyMiddleware, RouteSettings
from tests.upgrade.data import cases

RELEASE = "0.1.0"


async def fill_http(url: str) -> None:
    """Send every request of `cases.REQUESTS` once through 0.1.0's middleware."""
    store = open_async_store(url)
    calls: list[str] = []
    app = IdempotencyMiddleware(
        cases.payments_app(RELEASE, calls),
        store=store,
        routes={"/json-payments": RouteSettings(fingerprint="json"), "/**": RouteSettings()},
        retention=cases.RETENTION,
        required=True,
    )
    wrapped = cases.authenticated(app)
    for user, credential, path, key, body in cases.REQUESTS:
        status, answered = await cases.post(
            wrapped, path, key, body, user=user, credential=credential
        )
        assert (status, answered) == (201, cases.answer(RELEASE, key)), (key, status, answered)
    assert len(calls) == len(cases.REQUESTS)
    await store.aclose()


def fill_functions(url: str) -> None:
    """Call the int-set and the str-set functions once each under 0.1.0's decorator."""
    store = open_store(url)
    for namespace, order in (
        (cases.NAMESPACE_INTS, cases.int_order()),
        (cases.NAMESPACE_STRS, cases.str_order()),
    ):

        def charge(order: Any) -> dict[str, str]:
            return cases.charged(RELEASE, order)

        decorated = idempotent(
            store, key=lambda order: order.id, namespace=namespace, retention=cases.RETENTION
        )(charge)
        assert decorated(order) == cases.charged(RELEASE, order)
    store.close()


def dump(url: str) -> dict[str, Any]:
    """Return what the PostgreSQL table or Redis prefix of `url` holds, as stored."""
    parts = urlsplit(url)
    options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    base = url.split("?", 1)[0]
    if parts.scheme.startswith("postgres"):
        import psycopg

        from retrysafe.stores._sql.postgres import RecordTable

        table = options["table"]
        statements = [s.decode() for s in RecordTable.for_table(table).create_schema]
        with psycopg.connect(base) as conn:
            cursor = conn.execute(f'SELECT * FROM "{table}" ORDER BY id')  # noqa: S608
            names = [column.name for column in cursor.description or ()]
            rows = [dict(zip(names, map(_jsonable, row), strict=True)) for row in cursor]
        return {"table": table, "schema": statements, "rows": rows, "filled_at": time.time()}
    import redis

    prefix = options["prefix"]
    client = redis.Redis.from_url(base)
    keys: list[dict[str, Any]] = []
    for key in sorted(client.scan_iter(match=f"{prefix}*")):
        kind = client.type(key).decode()
        if kind == "hash":
            value: Any = {_text(k): _jsonable(v) for k, v in client.hgetall(key).items()}
        elif kind == "string":
            value = _jsonable(client.get(key))
        else:
            raise SystemExit(f"{key!r}: a {kind} key, which this dump does not know")
        keys.append({"key": _text(key), "type": kind, "value": value, "pttl": client.pttl(key)})
    client.close()
    return {"prefix": prefix, "keys": keys, "filled_at": time.time()}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _jsonable(value: Any) -> Any:
    """A stored value in JSON: bytes as {"b64": ...}, the rest as they are."""
    if isinstance(value, bytes | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="the store to fill, as 0.1.0's open_store takes it")
    parser.add_argument("--dump", type=Path, help="write the table's or prefix's content here")
    args = parser.parse_args()
    if retrysafe.__version__ != RELEASE or os.environ.get("PYTHONHASHSEED") != cases.HASH_SEED:
        raise SystemExit(
            f"Run under retrysafe {RELEASE} with PYTHONHASHSEED={cases.HASH_SEED}, "
            f"not {retrysafe.__version__} from {retrysafe.__file__}."
        )
    asyncio.run(fill_http(args.url))
    fill_functions(args.url)
    if args.dump is not None:
        args.dump.write_text(json.dumps(dump(args.url), indent=1, sort_keys=True) + "\n")
    print(f"filled {args.url.split('?', 1)[0]} with retrysafe {RELEASE}", file=sys.stderr)


if __name__ == "__main__":
    main()
