"""What a framework's configuration may hold (Django settings, Flask `app.config`): route
settings, and observers given as objects or import paths."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from retrysafe._http import RouteSettings
from retrysafe.observe import Observer

__all__ = ["observers_from_config", "routes_from_config"]


def routes_from_config(
    value: Mapping[Any, Any], *, name: str, error: Callable[[str], Exception]
) -> dict[str, RouteSettings | None]:
    """Return path patterns to their `RouteSettings`, each given as one, as a dict of its
    fields, or as None (exempt); raise `error(message)` naming `name[pattern]` otherwise."""
    routes: dict[str, RouteSettings | None] = {}
    for pattern, route in value.items():
        if route is None or isinstance(route, RouteSettings):
            routes[pattern] = route
        elif isinstance(route, Mapping):
            try:
                routes[pattern] = RouteSettings(**route)
            except TypeError as problem:
                raise error(f"{name}[{pattern!r}]: {problem}") from problem
        else:
            raise error(
                f"{name}[{pattern!r}] must be a RouteSettings, a dict of its fields or None."
            )
    return routes


def observers_from_config(
    entries: object,
    *,
    name: str,
    error: Callable[[str], Exception],
    load: Callable[[str], object],
) -> tuple[Observer, ...]:
    """Return the observers of a list: each an observer, or the import path of one (`load`
    imports it); raise `error(message)` naming `name` otherwise."""
    if isinstance(entries, str | Observer) or not isinstance(entries, Sequence):
        raise error(f"{name} must be a list of observers.")
    observers: list[Observer] = []
    for entry in entries:
        found: object = entry
        if isinstance(entry, str):
            try:
                found = load(entry)
            except ImportError as problem:
                raise error(f"{name}: {problem}") from problem
        if not isinstance(found, Observer):
            raise error(
                f"{name}: {entry!r} is not an observer: give an instance of a "
                "retrysafe.observe.Observer subclass, or the import path of one."
            )
        observers.append(found)
    return tuple(observers)
