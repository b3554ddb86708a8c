"""A one-module Django project on a test's database, run in a process of its own.

    python -m tests.transactions.django_app serve CONFIG FILE    waitress serving it (port in FILE)
    python -m tests.transactions.django_app crash CONFIG         one payment, killed on request
    python -m tests.transactions.django_app scenario CONFIG NAME a named scenario, JSON out

Django's settings are configured once per process, and the integration tests configure a
project without a database (tests/integrations/django_project.py); so this project, whose
`DATABASES` is the test's SQLite file, PostgreSQL server or MySQL server, runs in a process of
its own. CONFIG is JSON: `db` (sqlite, postgres or mysql), `dsn`, `table` (the records table),
`payments` (the payments table, `id, key, amount`), and for `crash` the `mode`, `key` and
`crash_at` point. On MySQL, Django's backend reaches the server through `MySQLdb`, here PyMySQL
installed as it.

`crash` works like tests/transactions/worker.py: at the chosen point it prints
`at:POINT {state}` and waits on stdin until the test kills it; otherwise it prints
`outcome:{json}`. Its `unit` mode runs `retrysafe.transactions.django.atomic` inside the
caller's own `transaction.atomic()`; its `view` mode sends a request through Django's handler
(the test client) to a `@transactional` view wrapped in the view's own `transaction.atomic()`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import secrets
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import django
from django.conf import settings

POINTS = ("before_claim", "after_claim", "after_write", "before_commit", "after_commit")
CALLER = {"Authorization": "Bearer tenant-a"}
"""The credential the requests send: keys are scoped by caller (B8)."""

CONFIG: dict[str, Any] = json.loads(sys.argv[2]) if __name__ == "__main__" else {}


def _database(config: dict[str, Any]) -> dict[str, Any]:
    if config["db"] == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": config["dsn"],
            "OPTIONS": {"timeout": 30},
        }
    parts = urlsplit(config["dsn"])
    if config["db"] == "mysql":
        import pymysql

        pymysql.install_as_MySQLdb()
        return {
            "ENGINE": "django.db.backends.mysql",
            "NAME": parts.path.lstrip("/"),
            "USER": parts.username or "",
            "PASSWORD": parts.password or "",
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": {"charset": "utf8mb4"},
        }
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


if CONFIG:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="retrysafe-tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["tests.transactions"],
        MIDDLEWARE=[],
        DATABASES={"default": _database(CONFIG)},
        USE_TZ=True,
        RETRYSAFE={"WAIT": 10},
    )
    django.setup()

# Django is set up from here on (when run as a program).
from django.db import models, transaction  # noqa: E402
from django.http import (  # noqa: E402
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path  # noqa: E402

from retrysafe import Identity  # noqa: E402
from retrysafe.stores.encrypted import Keyring  # noqa: E402
from retrysafe.transactions import django as idempotent  # noqa: E402
from retrysafe.transactions.django import RequestTransaction, Step, transactional  # noqa: E402


class Payment(models.Model):
    """A payment, in the test's own payments table (created by the test)."""

    id = models.CharField(primary_key=True, max_length=32)
    key = models.TextField()
    amount = models.IntegerField()

    class Meta:
        app_label = "transactions"
        db_table = CONFIG.get("payments", "rs_payments")
        managed = False


class BoomError(Exception):
    """Raised by a view or a unit of work after its write."""


def reach(point: str, **state: object) -> None:
    """Stop here for the kill if this is the crash point."""
    if point == CONFIG.get("crash_at"):
        print(f"at:{point} {json.dumps(state)}", flush=True)
        sys.stdin.readline()  # the test kills this process while it waits
        sys.exit(3)  # stdin closed: the test is gone


def boom() -> None:
    """Fail after a write."""
    raise BoomError


def _pay(key: str, amount: int) -> Payment:
    return Payment.objects.create(id=secrets.token_hex(6), key=key, amount=amount)


# The views.


@transactional(required=True, table=CONFIG.get("table"))
def payments(request: HttpRequest, tx: RequestTransaction[Any]) -> HttpResponse:
    """Make one payment; `fail` raises after the write, `status` answers with another status."""
    data = json.loads(request.body)
    payment = _pay(str(tx.key), data["amount"])
    if data.get("fail"):
        boom()
    return JsonResponse({"id": payment.id}, status=data.get("status", 201))


@transactional(table=CONFIG.get("table"))
def optional(request: HttpRequest, tx: RequestTransaction[Any]) -> HttpResponse:
    """Make one payment whether or not the request has a key."""
    payment = _pay(str(tx.key), json.loads(request.body)["amount"])
    return JsonResponse({"id": payment.id, "key": tx.key}, status=201)


@transactional(required=True, table=CONFIG.get("table"))
def stream(request: HttpRequest, tx: RequestTransaction[Any]) -> StreamingHttpResponse:
    """Make one payment and answer with a streamed body."""
    payment = _pay(str(tx.key), 1)
    return StreamingHttpResponse(iter([b"paid ", payment.id.encode()]), status=201)


@transactional(required=True, table=CONFIG.get("table"))
def _crash_payment(request: HttpRequest, tx: RequestTransaction[Any]) -> HttpResponse:
    reach("after_claim")
    payment = _pay(str(tx.key), 100)
    reach("after_write")
    return JsonResponse({"id": payment.id}, status=201)


def crash_view(request: HttpRequest) -> HttpResponse:
    """The payment view inside the view's own atomic block, with its crash points."""
    with transaction.atomic():
        reach("before_claim")
        response: HttpResponse = _crash_payment(request)
        reach("before_commit")
    return response


@transactional(table=CONFIG.get("table"))
def signup(request: HttpRequest, tx: RequestTransaction[Any]) -> HttpResponse:
    """Write a payment, then register the `email` as a payment id: a taken one fails, and the
    view catches that and answers 409, through the ORM or (`raw`) a cursor."""
    from django.db import IntegrityError, connection

    data = json.loads(request.body)
    _pay(str(tx.key), 1)
    try:
        if data.get("raw"):
            with connection.cursor() as cursor:
                table = connection.ops.quote_name(Payment._meta.db_table)
                cursor.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", [data["email"], "", 2])  # noqa: S608
        else:
            Payment.objects.create(id=data["email"], key=str(tx.key), amount=2)
    except IntegrityError:
        return JsonResponse({"detail": "email already registered"}, status=409)
    return JsonResponse({"email": data["email"]}, status=201)


urlpatterns = [
    path("payments", payments),
    path("optional", optional),
    path("stream", stream),
    path("crash", crash_view),
    path("signup", signup),
]


def scenario_secret_rolled_back() -> dict[str, Any]:
    """A process's first keyed request inside a block that rolls back (as `ATOMIC_REQUESTS`
    rolls back a request whose view raised), then a payment: the scope secret the first
    request created rolled back with it, and is not the one the payment is scoped by."""
    from django.test import Client

    client = Client(headers=CALLER)
    with contextlib.suppress(BoomError), transaction.atomic():
        client.post(
            "/payments", {"amount": 1}, content_type="application/json",
            headers={"Idempotency-Key": "s-0"},
        )  # fmt: skip
        boom()
    return _paid(client, "s-1")


def scenario_secret_retry() -> dict[str, Any]:
    """Another process's retry of `scenario_secret_rolled_back`'s payment."""
    from django.test import Client

    return _paid(Client(headers=CALLER), "s-1")


def scenario_secret_kept_after_commit() -> dict[str, Any]:
    """Three keyed requests, each in its own block that commits (as `ATOMIC_REQUESTS` runs
    them); how many times the process read the scope secret."""
    from django.test import Client

    from retrysafe.transactions import _django_web

    loads: list[bool] = []
    load = _django_web.load_secret_of

    def counted(backend: Any) -> tuple[bytes, bool]:
        loaded = load(backend)
        loads.append(loaded[1])
        return loaded

    _django_web.load_secret_of = counted
    client = Client(headers=CALLER)
    statuses = []
    for key in ("c-1", "c-2", "c-3"):
        with transaction.atomic():
            statuses.append(_paid(client, key)["status"])
    return {"statuses": statuses, "loads": loads}


def _paid(client: Any, key: str) -> dict[str, Any]:
    response = client.post(
        "/payments", {"amount": 5}, content_type="application/json",
        headers={"Idempotency-Key": key},
    )  # fmt: skip
    return {
        "status": response.status_code,
        "replay": response.get("Idempotent-Replayed") == "true",
        "outcome": response.content.decode(),
    }


# The programs.


def _identity(key: str) -> Identity:
    return Identity("orders", "tenant-a", key)


def crash_unit() -> dict[str, Any]:
    """One payment with `idempotent.atomic` inside the caller's atomic block."""
    key = CONFIG["key"]
    with transaction.atomic():
        reach("before_claim")
        with idempotent.atomic(
            identity=_identity(key), fingerprint="amount=100", table=CONFIG["table"]
        ) as tx:
            if not tx.replay:
                reach("after_claim")
                payment = _pay(key, 100)
                reach("after_write")
                tx.complete(json.dumps({"id": payment.id}).encode())
        reach("before_commit")
    result = {"replay": tx.replay, "outcome": (tx.outcome or b"").decode()}
    reach("after_commit", **result)
    return result


def crash_request() -> dict[str, Any]:
    """One payment request through Django's handler to the crash view."""
    from django.test import Client

    response = Client(headers={**CALLER, "Idempotency-Key": CONFIG["key"]}).post(
        "/crash", b"{}", content_type="application/json"
    )
    result = {
        "status": response.status_code,
        "replay": response.get("Idempotent-Replayed") == "true",
        "outcome": response.content.decode(),
    }
    reach("after_commit", **result)
    return result


def _attempt(
    key: str, amount: int = 100, *, fail: bool = False, forget: bool = False, commit: bool = False
) -> Any:
    """One unit of work (`commit`: that commits inside the block); return what it answered, or
    the name of the error it raised."""
    try:
        with idempotent.atomic(
            identity=_identity(key), fingerprint=f"amount={amount}", table=CONFIG["table"]
        ) as tx:
            if tx.replay:
                return {"replay": True, "outcome": (tx.outcome or b"").decode()}
            payment = _pay(key, amount)
            if fail:
                boom()
            if commit:
                transaction.commit()
            if not forget:
                tx.complete(json.dumps({"id": payment.id}).encode())
        return {"replay": False, "outcome": (tx.outcome or b"").decode()}
    except Exception as error:  # the scenario reports it
        return type(error).__name__


def scenario_unit() -> dict[str, Any]:
    """First run, replay, mismatch, an error, a forgotten outcome, a commit inside."""
    return {
        "first": _attempt("k-1"),
        "again": _attempt("k-1"),
        "mismatch": _attempt("k-1", 200),
        "error": _attempt("k-2", fail=True),
        "forgot": _attempt("k-3", forget=True),
        "after_error": _attempt("k-2"),
        "committed_inside": _attempt("k-4", commit=True),
    }


def scenario_nested() -> dict[str, Any]:
    """Inside the caller's atomic block: rolled back with it, committed with it, and refused
    when the caller's block was marked for rollback."""
    result: dict[str, Any] = {}
    try:
        with transaction.atomic():
            result["rolled_back"] = _attempt("n-1")
            boom()
    except BoomError:
        pass
    with transaction.atomic():
        result["committed"] = _attempt("n-2")
        result["in_block"] = transaction.get_connection().in_atomic_block
    with transaction.atomic():
        try:
            with idempotent.atomic(
                identity=_identity("n-3"), fingerprint="amount=100", table=CONFIG["table"]
            ) as tx:
                _pay("n-3", 100)
                transaction.set_rollback(True)
                tx.complete(b"{}")
        except Exception as error:  # the scenario reports it
            result["marked"] = type(error).__name__
    result["outside"] = transaction.get_connection().in_atomic_block
    return result


def scenario_phases() -> dict[str, Any]:
    """A phased order: the second phase fails once, the retry resumes, then a replay."""
    failures = [True]

    def reserve(step: Step) -> None:
        idempotent.insert_if_absent(
            Payment, {"id": "order", "key": "o-1", "amount": 0}, unique=["id"]
        )

    def charge(step: Step) -> None:
        idempotent.update_by_key(Payment, {"id": "order"}, {"amount": 100})
        if failures and failures.pop():
            boom()

    def finish(step: Step) -> bytes:
        return json.dumps({"amount": Payment.objects.get(id="order").amount}).encode()

    def run() -> Any:
        try:
            result = idempotent.run_phases(
                {"reserve": reserve, "charge": charge, "finish": finish},
                identity=_identity("o-1"),
                fingerprint="order",
                table=CONFIG["table"],
            )
        except Exception as error:  # the scenario reports it
            return type(error).__name__
        return [result.outcome.decode(), result.replay, result.resumed_from, list(result.ran)]

    outcome: dict[str, Any] = {"failed": run(), "amount": Payment.objects.get(id="order").amount}
    outcome["resumed"] = run()
    outcome["replayed"] = run()
    with transaction.atomic():
        outcome["in_atomic"] = run()
    return outcome


def scenario_writes() -> dict[str, Any]:
    """The write helpers on a model and on a table name, each repeated."""
    values = {"id": "w-1", "key": "w", "amount": 1}
    with transaction.atomic():
        first = idempotent.insert_if_absent(Payment, values, unique=["id"])
        second = idempotent.insert_if_absent(
            CONFIG["payments"], {**values, "amount": 9}, unique=["id"]
        )
        updated = idempotent.update_by_key(Payment, {"id": "w-1"}, {"amount": 5})
        updated_again = idempotent.update_by_key(Payment, {"id": "w-1"}, {"amount": 5})
    with transaction.atomic():
        deleted = idempotent.delete_by_key(Payment, {"id": "w-1"})
        deleted_again = idempotent.delete_by_key(Payment, {"id": "w-1"})
    return {
        "inserted": [first.inserted, second.inserted, second.row["amount"]],
        "updated": [updated, updated_again],
        "deleted": [deleted, deleted_again],
    }


SEALING_KEY = "c2VhbGluZy1rZXktb2YtdGhlLWRqYW5nby10ZXN0ISE="  # 32 bytes, the test's
MARKER = "card-4242-4242-4242"


def scenario_sealed() -> dict[str, Any]:
    """A unit of work and a phased operation given encryption=: their outcomes, then the unit's
    replay (opened with the keys)."""
    keyring = Keyring([SEALING_KEY])
    claim = {"identity": _identity("s-1"), "fingerprint": "amount=100", "table": CONFIG["table"]}
    with idempotent.atomic(encryption=keyring, **claim) as tx:
        payment = _pay("s-1", 100)
        tx.complete(json.dumps({"id": payment.id, "card": MARKER}).encode())
    with idempotent.atomic(encryption=keyring, **claim) as again:
        assert again.replay
    phased = idempotent.run_phases(
        {"finish": lambda step: json.dumps({"card": MARKER}).encode()},
        identity=_identity("s-2"),
        fingerprint="order",
        table=CONFIG["table"],
        encryption=keyring,
    )
    return {
        "first": (tx.outcome or b"").decode(),
        "again": (again.outcome or b"").decode(),
        "phased": phased.outcome.decode(),
        "key": SEALING_KEY,
        "marker": MARKER,
    }


def scenario_aborted() -> dict[str, Any]:
    """Signups of a taken email whose error the view caught: keyed and not, through the ORM
    and a raw cursor; each answer's status and problem type, and the errors logged."""
    import logging

    from django.test import Client

    Payment.objects.create(id="taken", key="before", amount=0)
    logged: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("retrysafe").addHandler(handler)
    client = Client(headers=CALLER)
    answers = {}
    for name, key, raw in [("orm", "a-1", False), ("orm-again", "a-1", False),
                           ("unkeyed", None, False), ("raw", "a-2", True)]:  # fmt: skip
        headers = {} if key is None else {"Idempotency-Key": key}
        response = client.post(
            "/signup", {"email": "taken", "raw": raw}, content_type="application/json",
            headers=headers,
        )  # fmt: skip
        problem = response.json().get("type") if response.status_code == 500 else None
        answers[name] = [response.status_code, problem, response.get("Retry-After")]
    return {"answers": answers, "logged": logged}


def scenario_async_view() -> dict[str, Any]:
    """An async class-based view given to `@transactional`, and a sync callable that returns
    a coroutine: what each raised, and whether a coroutine was left never awaited."""
    import gc
    import warnings

    from django.test import RequestFactory
    from django.views import View

    class Pay(View):
        async def post(self, request: HttpRequest, tx: Any = None) -> HttpResponse:
            return JsonResponse({"ok": 1}, status=201)

    result: dict[str, Any] = {}
    try:
        transactional(required=True, table=CONFIG["table"])(Pay.as_view())
    except TypeError as error:
        result["decorated"] = str(error)

    async def later(request: HttpRequest) -> HttpResponse:
        return JsonResponse({"ok": 1}, status=201)

    def returns_a_coroutine(request: HttpRequest, tx: Any) -> Any:
        return later(request)

    view = transactional(required=True, table=CONFIG["table"])(returns_a_coroutine)
    request = RequestFactory().post(
        "/pay", b"{}", content_type="application/json",
        headers={**CALLER, "Idempotency-Key": "v-1"},
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            view(request)
        except TypeError as error:
            result["called"] = str(error)
        gc.collect()
    result["never_awaited"] = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    return result


def _lose_next_commit_reply() -> None:
    """Make the next COMMIT on Django's connection lose its reply, with the helpers of
    tests/transactions/test_commit_lost_reply.py: on PostgreSQL a watcher shuts the socket
    down once the server runs the COMMIT (held there by the test's deferred trigger); on
    MariaDB Django's next connection is one that shuts its socket down after sending COMMIT."""
    from django.db import connection

    from tests.transactions import test_commit_lost_reply as lost
    from tests.transactions.conftest import Database

    database = Database(CONFIG["db"], CONFIG["dsn"], CONFIG["table"], CONFIG["payments"])
    if database.kind == "mysql":
        # Django's `from MySQLdb.constants import ...` made PyMySQL's `constants` a fresh copy
        # without the `COMMAND` the helper sends COMMIT with: import it under that name too.
        importlib.import_module("MySQLdb.constants.COMMAND")
        connection.close()
        connection.get_new_connection = lambda params: lost._lose_commit_reply(database)
        try:
            connection.ensure_connection()
        finally:
            del connection.get_new_connection  # Django's next connection is a plain one
        return
    connection.ensure_connection()
    raw = connection.connection
    threading.Thread(target=_cut_in_commit, args=(lost._cut, raw), daemon=True).start()


def _cut_in_commit(cut: Any, raw: Any) -> None:
    """Run `cut` on psycopg's `raw` connection once the server runs its COMMIT (waiting in
    the deferred trigger's `pg_sleep`), as pg_stat_activity shows; give up after 60 s."""
    import time

    import psycopg

    seen = (
        "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND query = 'COMMIT' "
        "AND wait_event = 'PgSleep'"
    )
    pid = raw.info.backend_pid
    deadline = time.monotonic() + 60
    with psycopg.connect(CONFIG["dsn"], autocommit=True) as watcher:
        while time.monotonic() < deadline:
            if watcher.execute(seen, (pid,)).fetchone():
                cut(raw)
                return
            time.sleep(0.01)  # polling the server's state, not ordering by time


def scenario_lost_commit() -> dict[str, Any]:
    """A unit of work, then a request to a `@transactional` view, each of whose COMMIT loses
    its reply: what each answered (the error the unit raised, the request's status), and what
    their retries under the same keys answered."""
    from django.test import Client

    from tests.transactions import test_commit_lost_reply as lost
    from tests.transactions.conftest import Database

    if CONFIG["db"] == "postgres":  # the deferred trigger that holds the COMMIT
        database = Database(CONFIG["db"], CONFIG["dsn"], CONFIG["table"], CONFIG["payments"])
        lost._lose_commit_reply(database).close()
    client = Client(headers=CALLER)
    _paid(client, "warm")  # the scope secret commits before any reply is lost
    result: dict[str, Any] = {}
    _lose_next_commit_reply()
    try:
        with idempotent.atomic(
            identity=_identity("l-1"), fingerprint="amount=100", table=CONFIG["table"]
        ) as tx:
            tx.complete(json.dumps({"id": _pay("l-1", 100).id}).encode())
        result["unit"] = {"replay": tx.replay, "outcome": (tx.outcome or b"").decode()}
    except Exception as error:  # the scenario reports it
        result["unit"] = {"error": type(error).__name__, "message": str(error)}
    result["unit_retry"] = _attempt("l-1")
    _lose_next_commit_reply()
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = logged.append  # type: ignore[method-assign]
    logging.getLogger("retrysafe").addHandler(handler)
    result["view"] = _paid(client, "l-2")
    logging.getLogger("retrysafe").removeHandler(handler)
    result["view_logged"] = [entry.getMessage() for entry in logged]
    result["view_retry"] = _paid(client, "l-2")
    return result


def serve(port_file: Path) -> None:
    """Serve the project with waitress on a loopback port of its own, written to `port_file`."""
    import waitress
    from django.core.wsgi import get_wsgi_application

    from tests.servers import announced_listener

    app = get_wsgi_application()
    waitress.serve(app, sockets=[announced_listener(port_file)], threads=16, _quiet=True)


def main() -> None:
    """Run the program the command line names."""
    command = sys.argv[1]
    if command == "serve":
        serve(Path(sys.argv[3]))
        return
    if command == "crash":
        result = crash_unit() if CONFIG["mode"] == "unit" else crash_request()
    else:
        result = globals()[f"scenario_{sys.argv[3]}"]()
    print(f"outcome:{json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main()
