"""The Flask extension's configuration: `RETRYSAFE_<OPTION>` keys of `app.config`, checked."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from retrysafe._errors import ConfigurationError
from retrysafe._http import RouteSettings, Settings, SettingsOptions
from retrysafe._keys import KeyPolicy
from retrysafe.integrations._config import observers_from_config, routes_from_config
from retrysafe.integrations._routes import framework_imports
from retrysafe.observe import Observer
from retrysafe.stores import Store, open_store

with framework_imports("retrysafe.integrations.flask", "Flask"):
    from werkzeug.utils import import_string

if TYPE_CHECKING:
    import flask

__all__ = [
    "CONFIG_KEYS",
    "CONFIG_PREFIX",
    "OPTIONS",
    "config_of",
    "imported",
    "observers_of",
    "options_from_config",
    "routes_of",
    "store_from_config",
]

CONFIG_PREFIX: Final = "RETRYSAFE_"
OPTIONS: Final = SettingsOptions.__optional_keys__ | SettingsOptions.__required_keys__
_OWN: Final = frozenset({"store", "principal", "routes", "observers"})
CONFIG_KEYS: Final = frozenset(CONFIG_PREFIX + name.upper() for name in OPTIONS | _OWN)
"""The `app.config` keys the extension reads: `RETRYSAFE_<OPTION>` for each of its options."""
STORE_CONFIG: Final = "RETRYSAFE_STORE"


def config_of(app: flask.Flask) -> dict[str, Any]:
    """Return the extension's settings in `app.config` by option name (`RETRYSAFE_WAIT`: `wait`).

    Raises:
        ConfigurationError: a `RETRYSAFE_*` key that names no option (a misspelling, say).
    """
    found: dict[str, Any] = {}
    for key, value in app.config.items():
        if not key.startswith(CONFIG_PREFIX):
            continue
        if key not in CONFIG_KEYS:
            close = difflib.get_close_matches(key, CONFIG_KEYS, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ConfigurationError(
                f"Unknown Flask config key {key!r}.{hint} The retrysafe extension reads "
                f"{', '.join(sorted(CONFIG_KEYS))}."
            )
        found[key.removeprefix(CONFIG_PREFIX).lower()] = value
    return found


def options_from_config(config: Mapping[str, Any], explicit: SettingsOptions) -> SettingsOptions:
    """Return the settings: `explicit` over those `config` gives, checked; an invalid one
    from the config is a `ConfigurationError` that names its key."""
    configured = {name: value for name, value in config.items() if name in OPTIONS}
    try:
        if isinstance(configured.get("key_policy"), Mapping):
            configured["key_policy"] = KeyPolicy(**configured["key_policy"])
        options = cast(SettingsOptions, {**configured, **explicit})
        Settings(**options)
    except (ConfigurationError, TypeError) as error:
        given = sorted(configured.keys() - explicit.keys())
        if not given:
            raise
        keys = ", ".join(CONFIG_PREFIX + name.upper() for name in given)
        raise ConfigurationError(f"{error} (app.config sets {keys})") from error
    return options


def store_from_config(value: object) -> Store:
    """Return the store `RETRYSAFE_STORE` names: a store URL, or a store."""
    if isinstance(value, Store):
        return value
    if isinstance(value, str) and value:
        return open_store(value)
    if not value:
        raise ConfigurationError(f"Pass store=... or set app.config[{STORE_CONFIG!r}].")
    raise ConfigurationError(f"app.config[{STORE_CONFIG!r}] must be a store URL or a store.")


def imported(value: Any, name: str) -> Any:
    """Return a config value, imported first when it is an import path (`"app.auth:user"`)."""
    if not isinstance(value, str):
        return value
    try:
        return import_string(value)
    except ImportError as error:
        raise ConfigurationError(f"{CONFIG_PREFIX}{name}: {error}") from error


def routes_of(value: object) -> dict[str, RouteSettings | None] | None:
    """Return `RETRYSAFE_ROUTES`: patterns to `RouteSettings`, a dict of their fields, or None."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{CONFIG_PREFIX}ROUTES must map path patterns to settings.")
    return routes_from_config(value, name=f"{CONFIG_PREFIX}ROUTES", error=ConfigurationError)


def observers_of(entries: object) -> tuple[Observer, ...]:
    """Return `RETRYSAFE_OBSERVERS`: each an observer, or the import path of one."""
    return observers_from_config(
        entries, name=f"{CONFIG_PREFIX}OBSERVERS", error=ConfigurationError, load=import_string
    )
