"""What a Django project configures: the `RETRYSAFE` settings entry and the views' marks.

Shared by the WSGI/ASGI application wrappers and the native middleware in
`retrysafe.integrations.django`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from retrysafe._encryption import Keyring
from retrysafe._http import RouteSettings, SettingsOptions
from retrysafe._http.routing import RoutePath
from retrysafe.integrations import _routes
from retrysafe.integrations._config import observers_from_config, routes_from_config
from retrysafe.integrations._routes import RouteCache, Unmarked
from retrysafe.observe import Observer
from retrysafe.stores import Store, open_store

# Django ships no type information (django-stubs is a separate project).
with _routes.framework_imports("retrysafe.integrations.django", "Django"):
    from django.conf import settings as django_settings  # type: ignore[import-untyped]
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
    from django.urls import Resolver404, resolve  # type: ignore[import-untyped]
    from django.utils.module_loading import import_string  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from retrysafe.asgi import Scope

__all__ = [
    "DjangoRoutes",
    "configured",
    "configured_store",
    "encryption_from_django",
    "observers_from_django",
    "settings_from_django",
    "store_url",
]

_OPTION_NAMES = SettingsOptions.__optional_keys__ | SettingsOptions.__required_keys__


class DjangoRoutes:
    """The `route_settings` hooks for a Django project: the mark of the view a path resolves to.

    `for_environ` is the WSGI hook, `for_scope` the ASGI one.

    Args:
        routes: path patterns for views without a mark.
        cache_size: how many resolved (method, path) to remember.
    """

    def __init__(
        self,
        *,
        routes: Mapping[str, RouteSettings | None] | None = None,
        cache_size: int = 1024,
    ) -> None:
        self._cache = RouteCache(routes, cache_size)

    def for_environ(self, environ: WSGIEnvironment) -> RouteSettings | None:
        """Return the settings of the view a WSGI request goes to (None: not covered)."""
        script_name = environ.get("SCRIPT_NAME", "").encode("latin-1").decode("utf-8", "replace")
        path_info = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        return self._settings(environ["REQUEST_METHOD"], script_name, path_info or "/")

    def for_scope(self, scope: Scope) -> RouteSettings | None:
        """Return the settings of the view an ASGI request goes to (None: not covered)."""
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            return self._settings(scope["method"], root_path, path[len(root_path) :] or "/")
        return self._settings(scope["method"], "", path)

    def _settings(self, method: str, script_name: str, path_info: str) -> RouteSettings | None:
        key = (method, script_name, path_info)
        path = RoutePath(path_info, script_name + path_info)
        return self._cache.settings(key, path, lambda: _find_mark(path_info))


def _find_mark(path_info: str) -> RouteSettings | Unmarked | None:
    view = _view_of(path_info)
    if view is not None:
        return _routes.view_mark(view)
    if _appends_slash(path_info):
        return None  # CommonMiddleware answers a redirect (301), nothing runs: not the outcome
    return _routes.UNMARKED  # Django answers 404 itself


def _view_of(path_info: str) -> Any:
    """Return the view `path_info` resolves to, or None."""
    try:
        return resolve(path_info).func
    except Resolver404:
        return None


def _appends_slash(path_info: str) -> bool:
    """Whether CommonMiddleware redirects `path_info`, which resolves to no view, to its slashed
    path (APPEND_SLASH), as its `should_redirect_with_slash` decides."""
    if not django_settings.APPEND_SLASH or path_info.endswith("/"):
        return False
    view = _view_of(path_info + "/")
    return view is not None and getattr(view, "should_append_slash", True)


def settings_from_django() -> tuple[str | None, dict[str, RouteSettings | None], SettingsOptions]:
    """Return the store URL, path patterns and middleware options of `settings.RETRYSAFE`.

    Raises:
        ImproperlyConfigured: an unknown key or a malformed route.
    """
    config: Mapping[str, Any] = getattr(django_settings, "RETRYSAFE", None) or {}
    routes = routes_from_config(
        config.get("ROUTES") or {}, name="RETRYSAFE['ROUTES']", error=ImproperlyConfigured
    )
    options: dict[str, Any] = {}
    for name, value in config.items():
        if name in ("STORE", "ENCRYPTION", "ROUTES", "OBSERVERS"):
            continue
        if name.lower() not in _OPTION_NAMES:
            known = ", ".join(sorted(n.upper() for n in _OPTION_NAMES))
            raise ImproperlyConfigured(
                f"Unknown RETRYSAFE setting {name!r}; use STORE, ENCRYPTION, ROUTES, OBSERVERS "
                f"or one of {known}."
            )
        options[name.lower()] = value
    return config.get("STORE"), routes, cast(SettingsOptions, options)


def encryption_from_django() -> Keyring | None:
    """Return the keys of `settings.RETRYSAFE["ENCRYPTION"]`, which encrypt stored responses at
    rest (the store opened from `STORE`, and transactional views), or None.

    Raises:
        ImproperlyConfigured: a value that is not a `Keyring`.
    """
    config: Mapping[str, Any] = getattr(django_settings, "RETRYSAFE", None) or {}
    keyring = config.get("ENCRYPTION")
    if keyring is None or isinstance(keyring, Keyring):
        return keyring
    raise ImproperlyConfigured(
        "RETRYSAFE['ENCRYPTION'] must be a retrysafe.stores.encrypted.Keyring, such as "
        f"Keyring.from_env('RETRYSAFE_KEYS'), not {type(keyring).__name__}."
    )


def observers_from_django() -> tuple[Observer, ...]:
    """Return the observers of `settings.RETRYSAFE["OBSERVERS"]`: each an observer, or the
    dotted path of one (a module attribute, made once however many middlewares use it).

    Raises:
        ImproperlyConfigured: an entry that is not an observer, or a path that does not import.
    """
    config: Mapping[str, Any] = getattr(django_settings, "RETRYSAFE", None) or {}
    return observers_from_config(
        config.get("OBSERVERS") or (),
        name="RETRYSAFE['OBSERVERS']",
        error=ImproperlyConfigured,
        load=import_string,
    )


def configured(
    routes: Mapping[str, RouteSettings | None] | None,
    options: SettingsOptions,
    observers: Sequence[Observer] | None = None,
) -> tuple[str | None, dict[str, RouteSettings | None], SettingsOptions, tuple[Observer, ...]]:
    """Return the store URL, path patterns, options and observers: `settings.RETRYSAFE` under
    the args."""
    url, configured_routes, configured_options = settings_from_django()
    merged = configured_options.copy()
    merged.update(options)
    chosen = observers_from_django() if observers is None else tuple(observers)
    return url, configured_routes if routes is None else dict(routes), merged, chosen


def configured_store(url: str | None) -> Store:
    """Return the sync store `RETRYSAFE["STORE"]` names, sealed with `ENCRYPTION`'s keys."""
    return open_store(store_url(url), encryption=encryption_from_django())


def store_url(url: str | None) -> str:
    """Return the configured store URL, or raise the error that says how to set it."""
    if not url:
        raise ImproperlyConfigured(
            "Set RETRYSAFE = {'STORE': 'sqlite:///idempotency.db'} (any store URL) in settings, "
            "or pass store=..."
        )
    return url
