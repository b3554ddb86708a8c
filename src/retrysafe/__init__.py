"""retrysafe: make retries safe.

For one (scope, key), the side effect runs at most once, and every caller with that key gets
the one outcome.

Everything a user names is importable from here: the stores, the decorator, every error, and
what configures the HTTP faces (`Settings`, `RouteSettings`, `SettingsOptions`, `KeyPolicy`,
`RequestView`) and what they hand back (`Counters`, `Observation`). `retrysafe.asgi` and
`retrysafe.wsgi` export the HTTP ones too. Each class and function here names `retrysafe` as
its `__module__`, so tracebacks, reprs and pickles show the path users import, not the
private module that defines it (the private paths keep working).
"""

import typing as _typing

from retrysafe._clock import Clock, ManualClock, SystemClock
from retrysafe._decorator import idempotent
from retrysafe._engine import Decision, decide
from retrysafe._errors import (
    ConfigurationError,
    FencedError,
    IdempotencyError,
    InFlightError,
    InvalidKeyError,
    KeyMismatchError,
    NotReplayableError,
    OutcomeError,
    OutcomeUnknownError,
    RecordUnreadableError,
    ReplicaShortfallError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
)
from retrysafe._extras import MissingExtraError
from retrysafe._flow.counters import Counters
from retrysafe._flow.observing import Observation
from retrysafe._http.settings import RequestView, RouteSettings, Settings, SettingsOptions
from retrysafe._keys import KeyPolicy
from retrysafe._record import Claim, Identity, Record, State
from retrysafe._serializer import JSONSerializer, Serializer
from retrysafe.stores import AsyncStore, Store, StoreStats, open_async_store, open_store

__all__ = [
    "AsyncStore",
    "Claim",
    "Clock",
    "ConfigurationError",
    "Counters",
    "Decision",
    "FencedError",
    "IdempotencyError",
    "Identity",
    "InFlightError",
    "InvalidKeyError",
    "JSONSerializer",
    "KeyMismatchError",
    "KeyPolicy",
    "ManualClock",
    "MissingExtraError",
    "NotReplayableError",
    "Observation",
    "OutcomeError",
    "OutcomeUnknownError",
    "Record",
    "RecordUnreadableError",
    "ReplicaShortfallError",
    "RequestView",
    "RouteSettings",
    "Serializer",
    "Settings",
    "SettingsOptions",
    "State",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreStats",
    "StoreUnavailableError",
    "SystemClock",
    "decide",
    "idempotent",
    "open_async_store",
    "open_store",
]

# The version has one source, pyproject.toml: `__version__` is the installed distribution's, read
# when first asked for (importlib.metadata costs an import of every `import retrysafe` otherwise),
# as `retrysafe --version` reads it. Type checkers see a plain `str` attribute, not a
# module-level __getattr__ that would type every misspelt name as `str`.
if _typing.TYPE_CHECKING:
    __version__: str
else:

    def __getattr__(name: str) -> str:
        if name != "__version__":
            raise AttributeError(f"module 'retrysafe' has no attribute {name!r}")
        from importlib import metadata  # noqa: PLC0415 - only when asked for, as said above

        try:
            return metadata.version("retrysafe")
        except metadata.PackageNotFoundError:
            raise AttributeError(
                "retrysafe.__version__ comes from the installed distribution's metadata, and "
                "retrysafe is not installed: pip install retrysafe, or `make setup` in a clone"
            ) from None


# Name the public path (as httpx does): `retrysafe.KeyMismatchError: ...` in a traceback, and
# pickles that load from `retrysafe`. Importing any retrysafe module runs this first.
for _name in __all__:
    _value = globals()[_name]
    if getattr(_value, "__module__", "").startswith("retrysafe._"):
        _value.__module__ = __name__
del _name, _value
