"""Who the caller is, inside Django (B8): the native middleware scopes keys to `request.user`.

Django's settings are configured once per process, and the other integration tests configure
a project without authentication; so this project (sessions, `django.contrib.auth`, a SQLite
database) runs in a process of its own, served by waitress: `python -m` this module.
Each `httpx.Client` is one browser (its own cookies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe._http import SECRET_ENV
from retrysafe.integrations.django import idempotency
from retrysafe.stores import open_store
from tests.integrations.conftest import new_key
from tests.servers import announced_listener, wait_for_port_file

SECRET = "django-tests-scope-secret-0123456"
TOKENS = {"t1": "alice", "t2": "alice", "t3": "bob"}
"""Bearer tokens: t2 is alice's refreshed token."""
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    f"{__name__}.TokenMiddleware",
    "retrysafe.integrations.django.IdempotencyMiddleware",
]
CALLS: Counter[str] = Counter()
"""Handler calls in the server process, per path; `GET /calls` answers them."""


# The project, as the server process runs it.


class TokenMiddleware:
    """Sets `request.user` from `Authorization: Bearer <token>`, as token authentication does."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        """Authenticate by token, if the request has one."""
        from django.contrib.auth.models import User

        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token in TOKENS:
            request.user = User.objects.get(username=TOKENS[token])
        return self.get_response(request)


def login(request: HttpRequest) -> HttpResponse:
    """Log the named user in: a new session."""
    from django.contrib.auth import login as log_in
    from django.contrib.auth.models import User

    name = json.loads(request.body)["user"]
    log_in(request, User.objects.get(username=name))
    return JsonResponse({"user": name})


@idempotency()
def payments(request: HttpRequest) -> HttpResponse:
    """Count the call; answer who made it."""
    CALLS["/payments"] += 1
    user = request.user.username if request.user.is_authenticated else None
    return JsonResponse({"user": user, "n": CALLS["/payments"]}, status=201)


@idempotency(max_response_size=16)
def export(request: HttpRequest) -> HttpResponse:
    """A streamed body of 10 bytes, or 30 with `?big=1`."""
    CALLS["/export"] += 1
    chunks = [b"0123456789"] * (3 if request.GET.get("big") else 1)
    return StreamingHttpResponse(iter(chunks), status=201, content_type="text/plain")


@idempotency()
def fail(request: HttpRequest) -> HttpResponse:
    """Count the call, then fail."""
    CALLS["/fail"] += 1
    raise RuntimeError("the view failed")


def calls(request: HttpRequest) -> HttpResponse:
    """Answer the handler calls so far."""
    return JsonResponse(CALLS)


urlpatterns = [
    path("login", login),
    path("payments", payments),
    path("export", export),
    path("fail", fail),
    path("calls", calls),
]


def serve(port_file: Path, database: str, setup: dict[str, Any]) -> None:
    """Configure the project (`setup`: its `RETRYSAFE`, `MIDDLEWARE` and server), create its
    users, and serve it with waitress (WSGI) or uvicorn (ASGI, where Django runs the sync
    middleware in a thread) on a loopback port of its own, written to `port_file` once it
    listens: a port chosen by the test and bound later could be taken meanwhile by another
    test's server, which would then answer this test's requests."""
    import django
    import uvicorn
    import waitress
    from django.conf import settings
    from django.core.asgi import get_asgi_application
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    settings.configure(
        DEBUG=False,
        SECRET_KEY="retrysafe-tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
        ],
        MIDDLEWARE=setup["middleware"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": database}},
        USE_TZ=True,
        RETRYSAFE=setup["retrysafe"],
    )
    django.setup()
    from django.contrib.auth.models import User

    call_command("migrate", verbosity=0)
    for name in ("alice", "bob"):
        User.objects.get_or_create(username=name)
    asgi = setup["server"] == "uvicorn"
    app = get_asgi_application() if asgi else get_wsgi_application()  # a bad setup raises here
    listener = announced_listener(port_file)
    if asgi:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
    else:
        waitress.serve(app, sockets=[listener], threads=8, _quiet=True)


# The tests.


@dataclass
class Served:
    """The project in a server process."""

    url: str
    process: subprocess.Popen[bytes]
    clients: list[httpx.Client] = field(default_factory=list)

    def browser(self, user: str | None = None) -> httpx.Client:
        """Return a new client (a cookie jar), logged in as `user` if given."""
        client = httpx.Client(base_url=self.url, timeout=15)
        self.clients.append(client)
        if user is not None:
            assert client.post("/login", json={"user": user}).status_code == 200
        return client

    def calls(self) -> Counter[str]:
        """Return the handler calls in the server process."""
        return Counter(httpx.get(f"{self.url}/calls", timeout=15).json())

    def stop(self) -> None:
        """Close the clients, stop the server."""
        for client in self.clients:
            client.close()
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def serve_project(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """A factory: run the project in a server process with `RETRYSAFE` options (the scope
    secret in the environment unless `kept_secret`); stop them all afterwards."""
    running: list[Served] = []

    def run(
        *,
        kept_secret: bool = False,
        store: str = "memory://",
        server: str = "waitress",
        middleware: list[str] = MIDDLEWARE,
        **options: Any,
    ) -> Served:
        port_file = tmp_path / f"port-{len(running)}"
        env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
        if not kept_secret:
            env[SECRET_ENV] = SECRET
        retrysafe = {"STORE": store, "WAIT": 0, **options}
        setup = {"retrysafe": retrysafe, "server": server, "middleware": middleware}
        with (tmp_path / "server.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    __name__,
                    str(port_file),
                    str(tmp_path / "app.db"),
                    json.dumps(setup),
                ],
                cwd=Path(__file__).parents[2],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        served = Served("", process)
        running.append(served)
        try:
            port = wait_for_port_file(port_file, 60, alive=lambda: process.poll() is None)
        except RuntimeError:
            raise RuntimeError((tmp_path / "server.log").read_text()) from None
        served.url = f"http://127.0.0.1:{port}"
        return served

    yield run
    for served in running:
        served.stop()


def test_b8_login_again_keeps_the_scope_across_a_restart(
    serve_project: Callable[..., Served], tmp_path: Path
) -> None:
    """A user who logs in again (a new session) after the server restarted, and retries the
    key, gets the replay: the scope is `request.user`, hashed with the secret kept in the store
    (none configured)."""
    store = f"sqlite:///{tmp_path / 'idempotency.db'}"
    key = {"Idempotency-Key": new_key()}
    first = serve_project(kept_secret=True, store=store)
    original = first.browser("alice").post("/payments", headers=key, json={})
    first.stop()
    second = serve_project(kept_secret=True, store=store)
    retried = second.browser("alice").post("/payments", headers=key, json={})
    assert original.status_code == 201
    assert original.json() == {"user": "alice", "n": 1}
    assert retried.status_code == 201
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.content == original.content
    assert second.calls()["/payments"] == 0
    records = open_store(store)
    try:
        assert records.get(SECRET_IDENTITY) is not None
        (record,) = [r for r in records.list_records() if r.identity.key == key["Idempotency-Key"]]
    finally:
        records.close()
    assert record.identity.scope.startswith("p:")
    assert "alice" not in record.identity.scope


def test_b8_token_refresh_keeps_the_scope(serve_project: Callable[..., Served]) -> None:
    """A refreshed token of the same user replays, and so does the same user's session; another
    user's token with the same key runs on its own."""
    served = serve_project()
    key = {"Idempotency-Key": new_key()}
    client = served.browser()
    original = client.post("/payments", headers={**key, "Authorization": "Bearer t1"}, json={})
    refreshed = client.post("/payments", headers={**key, "Authorization": "Bearer t2"}, json={})
    by_session = served.browser("alice").post("/payments", headers=key, json={})
    other = client.post("/payments", headers={**key, "Authorization": "Bearer t3"}, json={})
    assert original.json() == {"user": "alice", "n": 1}
    assert refreshed.headers["idempotent-replayed"] == "true"
    assert refreshed.content == original.content
    assert by_session.headers["idempotent-replayed"] == "true"
    assert other.json() == {"user": "bob", "n": 2}
    assert served.calls()["/payments"] == 2


@pytest.mark.parametrize("server", ["waitress", "uvicorn"])
def test_b8_two_cookie_users_with_one_key_run_apart(
    serve_project: Callable[..., Served], server: str
) -> None:
    """Two users logged in by session cookie, no Authorization header, the same key and body:
    two executions, each user gets (and then replays) their own response; under WSGI and
    under ASGI alike."""
    served = serve_project(server=server)
    key = {"Idempotency-Key": new_key()}
    alice, bob = served.browser("alice"), served.browser("bob")
    first = [alice.post("/payments", headers=key, json={}) for _ in range(2)]
    second = [bob.post("/payments", headers=key, json={}) for _ in range(2)]
    assert [r.json() for r in first] == [{"user": "alice", "n": 1}] * 2
    assert [r.json() for r in second] == [{"user": "bob", "n": 2}] * 2
    replayed = [r.headers.get("idempotent-replayed") for r in first + second]
    assert replayed == [None, "true", None, "true"]
    assert served.calls()["/payments"] == 2


def test_b8_anonymous_keyed_request_is_refused(serve_project: Callable[..., Served]) -> None:
    """A keyed request with no user and no credential gets the 400 scope-missing problem; the
    view does not run. Without a key it runs, untracked (B6)."""
    served = serve_project()
    client = served.browser()
    refused = client.post("/payments", headers={"Idempotency-Key": new_key()}, json={})
    assert client.post("/payments", json={}).status_code == 201
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("#scope-missing")
    assert served.calls()["/payments"] == 1


def test_b8_anonymous_shared_scope(serve_project: Callable[..., Served]) -> None:
    """With `ANONYMOUS: "shared"`, two anonymous callers with one key share a scope: the second
    gets the replay."""
    served = serve_project(ANONYMOUS="shared")
    key = {"Idempotency-Key": new_key()}
    first = served.browser().post("/payments", headers=key, json={})
    second = served.browser().post("/payments", headers=key, json={})
    assert first.json() == {"user": None, "n": 1}
    assert second.headers["idempotent-replayed"] == "true"
    assert served.calls()["/payments"] == 1


def test_b23_streamed_response_is_stored_or_marked_not_stored(
    serve_project: Callable[..., Served],
) -> None:
    """A `StreamingHttpResponse` within `max_response_size` is stored and replayed byte for
    byte; a longer one reaches the client whole, and a retry gets 410 response-not-stored
    (B22); a view that raises releases its claim, so its retry runs again (B18)."""
    served = serve_project()
    client = served.browser("alice")
    for target, body in [("/export", b"0123456789"), ("/export?big=1", b"0123456789" * 3)]:
        key = {"Idempotency-Key": new_key()}
        first = client.post(target, headers=key, json={})
        again = client.post(target, headers=key, json={})
        assert (first.status_code, first.content) == (201, body)
        if len(body) <= 16:
            assert (again.status_code, again.content) == (201, body)
            assert again.headers["content-type"] == "text/plain"
        else:
            assert again.status_code == 410
            assert again.json()["type"].endswith("#response-not-stored")
    key = {"Idempotency-Key": new_key()}
    assert [client.post("/fail", headers=key, json={}).status_code for _ in range(2)] == [500] * 2
    assert served.calls() == Counter({"/export": 2, "/fail": 2})


def test_b8_middleware_before_authentication_is_refused(
    serve_project: Callable[..., Served],
) -> None:
    """Listed before `AuthenticationMiddleware`, the middleware cannot see `request.user`:
    Django refuses to start with an error that says where it goes."""
    wrong = [MIDDLEWARE[0], MIDDLEWARE[3], MIDDLEWARE[1]]
    with pytest.raises(RuntimeError, match=r"(?s)ImproperlyConfigured.*after.*Authentication"):
        serve_project(middleware=wrong)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
