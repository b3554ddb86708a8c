"""The public surface: what `retrysafe` exports, and the one error root."""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
import traceback
from pathlib import Path

import pytest

import retrysafe
from retrysafe import _errors


def test_all_is_sorted_and_importable() -> None:
    """`retrysafe.__all__` is sorted and every name in it exists."""
    assert list(retrysafe.__all__) == sorted(retrysafe.__all__)
    for name in retrysafe.__all__:
        assert hasattr(retrysafe, name), name


def test_every_public_member_is_in_all() -> None:
    """No public attribute of the package is left out of `__all__` by accident."""
    public = {
        name
        for name, value in vars(retrysafe).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public <= set(retrysafe.__all__)


def test_every_error_has_the_one_root() -> None:
    """Every exception retrysafe defines derives from IdempotencyError."""
    errors = [
        value
        for value in vars(_errors).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert len(errors) > 5
    for error in errors:
        assert issubclass(error, retrysafe.IdempotencyError), error


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mongodb://localhost/db", "Unknown store URL scheme"),
        ("mysql://localhost/db", "A MySQL store URL names a user"),
        ("nonsense", "Unknown store URL scheme"),
        ("memory://somewhere", "just 'memory://'"),
    ],
)
def test_bad_store_url_is_a_configuration_error(url: str, message: str) -> None:
    """A store URL that names no store, or misuses one, is refused with a precise message."""
    with pytest.raises(retrysafe.ConfigurationError, match=message):
        retrysafe.open_store(url)
    with pytest.raises(ValueError, match=message):
        retrysafe.open_async_store(url)


# The modules a face is configured from. Each name in their `__all__` must resolve, and a class
# or function must name a public module (no `_` part), so reprs, tracebacks and pickles show
# the path users import.
PUBLIC_MODULES = ["retrysafe", "retrysafe.asgi", "retrysafe.wsgi"]
CONFIGURATION = [
    "Counters",
    "KeyPolicy",
    "Observation",
    "RequestView",
    "RouteSettings",
    "Settings",
    "SettingsOptions",
]
DOCS = [
    Path(__file__).parent.parent / "README.md",
    *sorted((Path(__file__).parent.parent / "docs").glob("*.md")),
]
PRIVATE_IMPORT = re.compile(r"\bfrom\s+retrysafe\._|\bimport\s+retrysafe\._")
"""An import from a private module of the package (`from retrysafe._http import ...`)."""


def _is_public(module: str) -> bool:
    return not any(part.startswith("_") for part in module.split("."))


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_names_resolve_to_a_public_module(name: str) -> None:
    """Every name a public module exports exists, and its class or function names a public
    module that holds it (as pickle looks it up)."""
    module = importlib.import_module(name)
    for exported in module.__all__:
        value = getattr(module, exported)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        home = value.__module__
        assert _is_public(home), f"{name}.{exported} names {home}"
        assert getattr(importlib.import_module(home), value.__qualname__) is value, exported


@pytest.mark.parametrize("name", CONFIGURATION)
def test_what_configures_a_face_is_public_and_the_private_path_still_works(name: str) -> None:
    """`KeyPolicy`, `RequestView`, `RouteSettings`, `Settings`, ... come from `retrysafe`,
    `retrysafe.asgi` and `retrysafe.wsgi` alike, the same objects as before at their old paths."""
    private = {
        "Counters": "retrysafe._flow.counters",
        "KeyPolicy": "retrysafe._keys",
        "Observation": "retrysafe._flow.observing",
    }.get(name, "retrysafe._http")
    value = getattr(importlib.import_module(private), name)
    for module in PUBLIC_MODULES:
        assert name in importlib.import_module(module).__all__, module
        assert getattr(importlib.import_module(module), name) is value, module
    assert value.__module__ == "retrysafe"


def _all_errors() -> list[type[Exception]]:
    found = [
        value
        for value in vars(_errors).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    return [*found, retrysafe.MissingExtraError]


@pytest.mark.parametrize("error", _all_errors(), ids=lambda error: error.__name__)
def test_b26_every_error_is_public_in_tracebacks_and_pickles(error: type[Exception]) -> None:
    """Each error is `retrysafe.<Name>` (its `__module__`, its traceback line), and an
    instance survives pickling with its type, message and attributes."""
    assert error.__module__ == "retrysafe"
    assert getattr(retrysafe, error.__name__) is error
    assert error.__name__ in retrysafe.__all__
    instance = error("the message")
    line = traceback.format_exception_only(instance)[-1]
    assert line == f"retrysafe.{error.__name__}: the message\n"
    copy = pickle.loads(pickle.dumps(instance))  # noqa: S301 - our own bytes
    assert type(copy) is error
    assert copy.args == ("the message",)


def test_b14_in_flight_error_keeps_its_retry_after_through_pickling() -> None:
    """`InFlightError.retry_after` (keyword-only) survives pickling, as a process pool needs."""
    error = retrysafe.InFlightError("still running", retry_after=2.5)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (type(copy), copy.args, copy.retry_after) == (type(error), error.args, 2.5)


def test_configuration_values_pickle_from_their_public_path() -> None:
    """A `KeyPolicy`, `RouteSettings` and `Settings` pickle by their public path and load
    equal."""
    values = [
        retrysafe.KeyPolicy(strict=True, max_length=64),
        retrysafe.RouteSettings(required=True, retention=60),
        retrysafe.Settings(wait=0, key_policy=retrysafe.KeyPolicy(uuid_only=True)),
    ]
    for value in values:
        assert type(value).__module__ == "retrysafe"
        assert pickle.loads(pickle.dumps(value)) == value  # noqa: S301 - our own bytes


def _private_paths_of_public_names() -> re.Pattern[str]:
    names = {n for m in PUBLIC_MODULES for n in importlib.import_module(m).__all__}
    alternatives = "|".join(sorted(names))
    return re.compile(rf"\bretrysafe(?:\.\w+)*\._\w+(?:\.\w+)*\.(?:{alternatives})\b")


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_no_docs_page_imports_a_private_module(page: Path) -> None:
    """README.md and docs/*.md never tell users to import from a private module of the
    package (`from retrysafe._keys import ...`), nor name a public name by a private path
    (`retrysafe._http.Settings`)."""
    private_path = _private_paths_of_public_names()
    found = [
        f"{page.name}:{number}: {line.strip()}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE_IMPORT.search(line) or private_path.search(line)
    ]
    assert not found
