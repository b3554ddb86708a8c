"""Which settings apply to a request: path patterns, or a framework hook's answer."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Generic, Self, TypeVar, Unpack

from retrysafe._errors import ConfigurationError
from retrysafe._http.settings import RouteSettings, Settings, SettingsOptions

__all__ = ["Gate", "PathMatcher", "RoutePath", "Router", "compile_pattern", "hook_may_require_key"]

R = TypeVar("R")
_EVERY_PATH: Final = frozenset({"**", "/**"})
"""The catch-all patterns: they match every path."""


def compile_pattern(pattern: str) -> str:
    """Translate a path pattern: `*` is one segment or part of one, `**` any rest of the path."""
    if not pattern.startswith(("/", "*")):
        raise ConfigurationError(f"A route pattern starts with '/': {pattern!r}.")
    parts = re.split(r"(\*\*|\*)", pattern)
    return "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part) for part in parts
    )


class RoutePath(str):
    """A request's path as its app routes it, without the mount prefix (ASGI `root_path`,
    WSGI `SCRIPT_NAME`); `whole` is the path with the prefix."""

    whole: str

    def __new__(cls, path: str, whole: str) -> Self:
        route_path = super().__new__(cls, path)
        route_path.whole = whole
        return route_path


class PathMatcher:
    """Path patterns in order, each matched against all of a path: the first match wins.

    Patterns name the path as the app routes it (a `RoutePath`). A pattern written for the
    whole path, mount prefix included, keeps its routes: where the path matches no pattern or
    only a catch-all (`**`), and its whole path matches another pattern, that one wins.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        alternatives = [f"(?P<r{i}>{compile_pattern(p)})" for i, p in enumerate(patterns)]
        self._regex = re.compile("|".join(alternatives)) if alternatives else None
        self._catch_all = frozenset(i for i, p in enumerate(patterns) if p in _EVERY_PATH)

    def find(self, path: str) -> int | None:
        """Return the index of the pattern that decides for `path`, or None if none matches."""
        found = self._first(path)
        whole = path.whole if isinstance(path, RoutePath) else path
        if whole == path or (found is not None and found not in self._catch_all):
            return found
        prefixed = self._first(whole)
        return found if prefixed is None or prefixed in self._catch_all else prefixed

    def _first(self, path: str) -> int | None:
        match = None if self._regex is None else self._regex.fullmatch(path)
        if match is None or match.lastgroup is None:
            return None
        return int(match.lastgroup[1:])


def hook_may_require_key(hook: object, settings: Settings) -> bool:
    """Return whether a request without a key may need an answer, under a `route_settings` hook.

    A hook may have a `may_require_key` attribute, False when no route it answers for requires
    a key: requests without one then pass straight through instead of calling the hook. It is
    read at every such request, so a hook may change it as routes are added. Without it, or
    when the middleware's own settings require keys, every such request asks the hook.
    """
    return settings.required or bool(getattr(hook, "may_require_key", True))


class Router:
    """Which settings apply to a request: path patterns, first match wins, or a hook's answer.

    Args:
        settings: the middleware settings, applied to paths no pattern matches.
        routes: path pattern to route settings, or None for "not covered".
        hooked: a `route_settings` hook decides instead of `routes`.
    """

    _CACHE_LIMIT: Final = 256

    def __init__(
        self,
        settings: Settings,
        routes: Mapping[str, RouteSettings | None] | None = None,
        *,
        hooked: bool = False,
    ) -> None:
        if hooked and routes:
            raise ConfigurationError("Give either routes or a route_settings hook, not both.")
        self.settings = settings
        self._cache: dict[RouteSettings, Settings] = {}
        routes = routes or {}
        self._matcher = PathMatcher(routes)
        self._targets = [None if r is None else settings.with_route(r) for r in routes.values()]
        self.only: Settings | None = None if routes or hooked else settings
        """The settings of every path, when there are no routes (no path to match)."""
        known = [settings, *(s for s in self._targets if s is not None)]
        self.methods: frozenset[str] = frozenset().union(*(s.methods for s in known))
        """Every method any route covers: other methods pass through at once."""
        self.may_require: bool = hooked or any(s.required for s in known)
        """Whether a request without a key may need an answer (a route requires keys)."""

    def for_path(self, path: str) -> Settings | None:
        """Return the settings for `path` (a `RoutePath`, or the whole path), or None if it
        is not covered."""
        index = self._matcher.find(path)
        return self.settings if index is None else self._targets[index]

    def for_route(self, route: RouteSettings | None) -> Settings | None:
        """Return the settings for a hook's answer `route` (None: not covered)."""
        if route is None:
            return None
        settings = self._cache.get(route)
        if settings is None:
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            settings = self._cache[route] = self.settings.with_route(route)
        return settings


class Gate(Generic[R]):
    """Which requests a middleware tracks, and with which settings (B5, B6); one per face.

    Args:
        settings: a `Settings` to start from (default `Settings()`); `options` override it.
        routes: path pattern to `RouteSettings` (None: not covered), first match wins.
        hook: instead of `routes`, a function of the request (an ASGI scope, a WSGI environ)
            returning its `RouteSettings`, or None if it is not covered.
        path_of: the request's path, for `routes`: a `RoutePath`, without the mount prefix.
        options: any `Settings` field by name.
    """

    def __init__(
        self,
        settings: Settings | None,
        routes: Mapping[str, RouteSettings | None] | None,
        hook: Callable[[R], RouteSettings | None] | None,
        path_of: Callable[[R], str],
        **options: Unpack[SettingsOptions],
    ) -> None:
        base = settings or Settings()
        self.settings = dataclasses.replace(base, **options) if options else base
        self.router = Router(self.settings, routes, hooked=hook is not None)
        self.methods = self.router.methods
        """Every method any route covers: requests with another pass straight through."""
        self._hook = hook
        self._path_of = path_of

    def settings_for(self, request: R, method: str, keyed: bool) -> Settings | None:
        """Return the settings to track a request of a covered method with, or None to let it
        pass through: a route that does not cover it, or no key where none is required."""
        hook, settings = self._hook, self.settings
        if not keyed and not (
            self.router.may_require if hook is None else hook_may_require_key(hook, settings)
        ):
            return None
        if hook is None:
            router = self.router
            chosen = router.only or router.for_path(self._path_of(request))
        else:
            chosen = self.router.for_route(hook(request))
        if chosen is None or method not in chosen.methods or not (keyed or chosen.required):
            return None
        return chosen
