"""The Flask extension configured from `app.config`, as Flask extensions are (issue 17, item 4).

Apps are built by an application factory around one module-level `Idempotency()`, served by
waitress on loopback; `flask routes` runs in a real subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask

import retrysafe
from retrysafe import ConfigurationError, KeyPolicy, RequestView, RouteSettings
from retrysafe.integrations import flask as retrysafe_flask
from retrysafe.integrations.flask import FlaskIdempotency, Idempotency, idempotency
from retrysafe.observe import Observer, Operation, StoreCall
from retrysafe.stores.memory import MemoryStore
from tests.http.conftest import WsgiServer, is_problem
from tests.integrations.apps import Recorder
from tests.integrations.conftest import CALLER, new_key

SECRET = "flask-config-scope-secret-0123456789"
BOUND = 15.0
"""Seconds any one wait in these tests may take before the test fails."""

EXTENSION = Idempotency()
"""One extension for every app, as `extensions.py` holds it; each app configures its own."""


class ClaimWatcher(Observer):
    """Sets `reached` once the store has been asked to claim `count` times."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._claims = 0
        self._lock = threading.Lock()
        self.reached = threading.Event()

    def store_call(self, operation: Operation | None, call: StoreCall) -> None:
        """Count claims."""
        if call.name == "claim":
            with self._lock:
                self._claims += 1
                if self._claims >= self._count:
                    self.reached.set()


OBSERVER = ClaimWatcher(1)
"""An observer config names by its import path."""


def principal() -> object:
    """A principal function config names by its import path."""
    return None


def other_principal() -> object:
    """A principal function given as an argument."""
    return None


def scope_of(request: RequestView) -> str | None:
    """A scope function, for the config that sets every option."""
    return "tenant"


@dataclass
class Api:
    """A served app: its URL, a client, handler calls, and the gate `/payments` waits at."""

    url: str
    app: Flask
    recorder: Recorder
    entered: threading.Event
    release: threading.Event
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=BOUND, headers=CALLER)

    def pay(self, key: str | None = None) -> httpx.Response:
        """POST /payments, with `Idempotency-Key: key` if given."""
        headers = {} if key is None else {"Idempotency-Key": key}
        return self.client.post("/payments", headers=headers, json={"amount": 5})


def create_app(
    recorder: Recorder, entered: threading.Event, release: threading.Event, **config: Any
) -> Flask:
    """An application factory: config first, then the shared extension's `init_app`.

    `/payments` is marked with the defaults, sets `entered` and waits for `release`;
    `/health` is unmarked."""
    app = Flask(__name__)
    app.config.from_mapping(RETRYSAFE_SCOPE_SECRET=SECRET, **config)

    @app.post("/payments")
    @idempotency()
    def payments() -> tuple[dict[str, int], int]:
        entered.set()
        if not release.wait(BOUND):
            raise RuntimeError("the test never released the view")
        return {"n": recorder.count("/payments")}, 201

    @app.post("/health")
    def health() -> dict[str, bool]:
        recorder.count("/health")
        return {"ok": True}

    EXTENSION.init_app(app)
    return app


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """A factory: serve an app with `config` (and a store URL in `tmp_path`) on waitress."""
    running: list[tuple[WsgiServer, Api]] = []

    def run(*, held: bool = False, **config: Any) -> Api:
        config.setdefault("RETRYSAFE_STORE", f"sqlite:///{tmp_path / 'idempotency.db'}")
        recorder, entered, release = Recorder(), threading.Event(), threading.Event()
        if not held:
            release.set()
        app = create_app(recorder, entered, release, **config)
        server = WsgiServer(app)
        api = Api(server.url, app, recorder, entered, release)
        running.append((server, api))
        return api

    yield run
    for server, api in running:
        api.release.set()
        api.client.close()
        server.stop()


def test_b6_required_from_config_refuses_a_request_without_a_key(serve: Callable[..., Api]) -> None:
    """`RETRYSAFE_REQUIRED = True` answers 400 `key-required` to a covered request without a
    key, and its view does not run; `RETRYSAFE_ROUTES` leaves a route uncovered."""
    api = serve(RETRYSAFE_REQUIRED=True, RETRYSAFE_ROUTES={"/health": None})

    assert is_problem(api.pay(), 400, "key-required")
    assert api.recorder.calls["/payments"] == 0

    key = new_key()
    first, again = api.pay(key), api.pay(key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert api.recorder.calls["/payments"] == 1
    assert api.client.post("/health").status_code == 200  # not covered: no key needed


def test_b15_wait_zero_from_config_answers_a_duplicate_in_flight_at_once(
    serve: Callable[..., Api],
) -> None:
    """`RETRYSAFE_WAIT = 0`: a duplicate of a request still running gets 409 without waiting.
    The first request finishes only once the duplicate has claimed; a duplicate that waited
    (the default: up to 10 s) would then get the first one's replay (201) instead."""
    watcher = ClaimWatcher(2)
    api = serve(held=True, RETRYSAFE_WAIT=0, RETRYSAFE_OBSERVERS=[watcher])
    key = new_key()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(api.pay, key)
        assert api.entered.wait(BOUND), "the first request never reached its view"
        duplicate = pool.submit(api.pay, key)
        assert watcher.reached.wait(BOUND), "the duplicate never reached the store"
        api.release.set()  # the first completes: a duplicate still waiting would replay it
        assert first.result(BOUND).status_code == 201
        answer = duplicate.result(BOUND)
    assert is_problem(answer, 409, "request-in-flight")
    assert api.recorder.calls["/payments"] == 1


# A valid value other than the default for each option, so each is seen to arrive.
OPTIONS: dict[str, Any] = {
    "methods": ["POST"],
    "required": True,
    "key_policy": {"uuid_only": True},
    "scope_header": "X-API-Key",
    "scope_function": scope_of,
    "anonymous": "shared",
    "scope_secret": "another-scope-secret-0123456789",
    "fingerprint": "json",
    "namespace": "payments-api",
    "retention": 60.0,
    "lease": 5.0,
    "wait": 0.0,
    "mismatch_status": 409,
    "replay_header": "X-Replayed",
    "stored_headers": ["etag"],
    "outcomes": "all",
    "fail_open": True,
    "max_body_size": 1000,
    "max_response_size": 2000,
    "max_in_flight_per_scope": 3,
    "problem_base_url": "https://docs.example/problems#",
}
EXPECTED = {
    **OPTIONS,
    "methods": frozenset({"POST"}),
    "key_policy": KeyPolicy(uuid_only=True),
    "stored_headers": frozenset({"etag"}),
}


def test_every_option_comes_from_config_and_arguments_win() -> None:
    """Each setting is read from `RETRYSAFE_<OPTION>`, and the store, routes, observers and
    principal from theirs (import paths too); an argument wins over its config key. The app's
    state is `app.extensions["retrysafe"]`."""
    assert set(OPTIONS) == set(retrysafe.SettingsOptions.__optional_keys__)
    app = Flask(__name__)
    app.config.from_mapping({f"RETRYSAFE_{name.upper()}": v for name, v in OPTIONS.items()})
    app.config.update(
        RETRYSAFE_STORE="memory://",
        RETRYSAFE_ROUTES={"/health": None, "/orders": {"retention": 5.0}},
        RETRYSAFE_OBSERVERS=["tests.integrations.test_flask_config:OBSERVER"],
        RETRYSAFE_PRINCIPAL="tests.integrations.test_flask_config.principal",
    )
    state = Idempotency().init_app(app)

    assert app.extensions["retrysafe"] is state
    for name, value in EXPECTED.items():
        assert getattr(state.settings, name) == value, name
    assert isinstance(state.store, MemoryStore)
    assert OBSERVER in state.observation.observers
    assert state.principal is principal

    explicit = Flask(__name__)
    explicit.config.update(app.config)
    store = MemoryStore()
    Idempotency(explicit, store=store, wait=2.5, observers=[], principal=other_principal)
    mine = explicit.extensions["retrysafe"]
    assert (mine.store, mine.settings.wait, mine.principal) == (store, 2.5, other_principal)
    assert OBSERVER not in mine.observation.observers
    assert mine.settings.retention == 60.0  # not given: from the config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"RETRYSAFE_WIAT": 0}, r"'RETRYSAFE_WIAT'\. Did you mean RETRYSAFE_WAIT\?"),
        ({"RETRYSAFE_REQUIRE_KEY": True}, r"Unknown Flask config key 'RETRYSAFE_REQUIRE_KEY'"),
        ({"RETRYSAFE_WAIT": "soon"}, r"\(app.config sets RETRYSAFE_WAIT\)"),
        ({"RETRYSAFE_LEASE": 0}, r"lease and retention must be positive.*RETRYSAFE_LEASE"),
        ({"RETRYSAFE_KEY_POLICY": {"uuid": True}}, r"\(app.config sets RETRYSAFE_KEY_POLICY\)"),
        ({"RETRYSAFE_ROUTES": {"/x": {"retain": 5}}}, r"RETRYSAFE_ROUTES\['/x'\]"),
        ({"RETRYSAFE_OBSERVERS": ["no.such.module:observer"]}, r"RETRYSAFE_OBSERVERS: "),
        ({"RETRYSAFE_OBSERVERS": [object()]}, r"is not an observer"),
        ({"RETRYSAFE_PRINCIPAL": 42}, r"RETRYSAFE_PRINCIPAL must be a function"),
        ({"RETRYSAFE_STORE": ""}, r"Pass store=\.\.\. or set app.config\['RETRYSAFE_STORE'\]"),
        ({"RETRYSAFE_STORE": 7}, r"must be a store URL or a store"),
    ],
)
def test_config_refuses_an_unknown_key_or_a_bad_value(config: dict[str, Any], message: str) -> None:
    """A misspelt `RETRYSAFE_*` key or a bad value is a `ConfigurationError` that names the
    config key, never silently ignored; no hook is registered."""
    app = Flask(__name__)
    app.config.update({"RETRYSAFE_STORE": "memory://", **config})
    with pytest.raises(ConfigurationError, match=message):
        Idempotency(app)
    assert "retrysafe" not in app.extensions
    assert not app.before_request_funcs


def test_a_bad_setting_is_refused_before_the_store_opens(tmp_path: Path) -> None:
    """An invalid setting in the config fails `init_app` before the store URL is opened."""
    path = tmp_path / "never.db"
    app = Flask(__name__)
    app.config.update(RETRYSAFE_STORE=f"sqlite:///{path}", RETRYSAFE_MISMATCH_STATUS=418)
    with pytest.raises(ConfigurationError, match="RETRYSAFE_MISMATCH_STATUS"):
        EXTENSION.init_app(app)
    assert not path.exists()


def test_config_is_read_per_app() -> None:
    """One extension object serves two apps, each with its own config and state."""
    first, second = Flask("first"), Flask("second")
    first.config.update(RETRYSAFE_STORE="memory://", RETRYSAFE_WAIT=0)
    second.config.update(RETRYSAFE_STORE="memory://", RETRYSAFE_REQUIRED=True)
    extension = Idempotency(key_policy=KeyPolicy(strict=True))
    one, two = extension.init_app(first), extension.init_app(second)
    assert (one.settings.wait, one.settings.required) == (0, False)
    assert (two.settings.wait, two.settings.required) == (10, True)
    assert one.settings.key_policy == two.settings.key_policy == KeyPolicy(strict=True)
    assert one.store is not two.store


def test_the_extension_names_its_public_module() -> None:
    """The extension's classes are `retrysafe.integrations.flask.<Name>`, where users import
    them."""
    for cls in (Idempotency, FlaskIdempotency, retrysafe_flask.FlaskRoutes):
        assert cls.__module__ == "retrysafe.integrations.flask"
        assert getattr(retrysafe_flask, cls.__name__) is cls
    assert RouteSettings.__module__ == "retrysafe"


APP_MODULE = """
from flask import Flask
from retrysafe.integrations.flask import Idempotency, idempotency

extension = Idempotency()


def create_app():
    app = Flask(__name__)
    app.config.from_mapping(RETRYSAFE_STORE="sqlite:///idempotency.db", RETRYSAFE_WAIT=0{extra})

    @app.post("/payments")
    @idempotency(required=True)
    def create_payment():
        return {{"status": "created"}}, 201

    extension.init_app(app)
    return app
"""


def _flask(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", module, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_flask_routes_command_loads_a_configured_app(tmp_path: Path) -> None:
    """`flask --app <module> routes` loads an app whose extension reads its config (the
    factory found by Flask) and lists its routes; a misspelt key fails the command, naming it."""
    (tmp_path / "payments_app.py").write_text(textwrap.dedent(APP_MODULE.format(extra="")))
    listed = _flask(tmp_path, "payments_app", "routes")
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in listed.stdout.splitlines() if "/payments" in line]
    assert line.split()[:2] == ["create_payment", "POST"]

    typo = APP_MODULE.format(extra=", RETRYSAFE_WIAT=1")
    (tmp_path / "typo_app.py").write_text(textwrap.dedent(typo))
    failed = _flask(tmp_path, "typo_app", "routes")
    assert failed.returncode != 0
    assert "Unknown Flask config key 'RETRYSAFE_WIAT'" in failed.stdout + failed.stderr
