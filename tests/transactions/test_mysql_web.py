"""Transactional mode in web handlers on MySQL and MariaDB (B29, B13, B18, B6, B14).

test_web.py's FastAPI tests, on the MySQL server: this module's `site` is the app on an
aiomysql connection per request (`connect` returns the coroutine of one) and on an
`AsyncSession` of `mysql+aiomysql`. The handler's writes, the key's record and the response
commit in one transaction before the response is sent, also for 20 concurrent duplicates
through uvicorn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from retrysafe.transactions.fastapi import RequestTransaction, Transactional, install, transaction
from tests.transactions.conftest import Database, make_database
from tests.transactions.test_web import (
    PaymentIn,
    Site,
    _insert,
    client,
    scope_secret,
    test_b6_requests_without_a_key,
    test_b13_another_request_with_the_key_is_refused,
    test_b14_concurrent_duplicates_over_http_make_one_payment,
    test_b18_a_failed_handler_rolls_back_its_writes_and_the_key,
    test_b29_the_response_commits_with_the_writes_and_replays,
)

pytestmark = pytest.mark.mysql

__all__ = [
    "client",
    "scope_secret",
    "test_b6_requests_without_a_key",
    "test_b13_another_request_with_the_key_is_refused",
    "test_b14_concurrent_duplicates_over_http_make_one_payment",
    "test_b18_a_failed_handler_rolls_back_its_writes_and_the_key",
    "test_b29_the_response_commits_with_the_writes_and_replays",
]


def mysql_app(database: Database, flavor: str) -> Any:
    """test_web.py's FastAPI app (the same routes), on MySQL through `flavor`."""
    app = FastAPI()
    install(app, connect=_connect(database, flavor), table=database.table)

    @app.post("/payments", status_code=201)
    async def create_payment(body: PaymentIn, tx: Transactional) -> Any:
        payment_id = await _insert(tx.connection, database, body.amount)
        if body.fail == "raise":
            raise RuntimeError("the handler failed after its write")
        if body.fail == "500":
            return JSONResponse({"error": "upstream"}, status_code=500)
        return {"id": payment_id, "amount": body.amount, "key": tx.key}

    @app.post("/strict", status_code=201)
    async def strict(
        body: PaymentIn,
        tx: Annotated[RequestTransaction[Any], Depends(transaction(required=True))],
    ) -> Any:
        return {"id": await _insert(tx.connection, database, body.amount)}

    @app.post("/untouched")
    async def untouched() -> Any:
        return {"covered": False}

    return app


def _connect(database: Database, flavor: str) -> Callable[[], Any]:
    if flavor == "mysql-aiomysql":
        return database.aconnect  # the coroutine of a connection, closed after the request
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.pool import NullPool

    url = database.sqlalchemy_url(asynchronous=True)
    return async_sessionmaker(create_async_engine(url, poolclass=NullPool))


@pytest.fixture(params=["mysql-aiomysql", "mysql-session"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """The FastAPI app on MySQL, through aiomysql connections and through AsyncSessions."""
    flavor = str(request.param)
    with make_database("mysql", request, tmp_path) as database:
        yield Site(database, flavor, mysql_app(database, flavor))
