"""Return values to bytes and back, for replay (B27), and canonical bytes for fingerprints.

`JSONSerializer` writes plain JSON for JSON's own values (`None`, `bool`, `int`, `float`, `str`,
lists, dicts with string keys) and a small tagged object, `{"$rs": TAG, "v": ...}`, for every
other supported type, so that a replay is equal to the first result *and of the same type*:

| type                               | tag          | stored as                            |
|------------------------------------|--------------|--------------------------------------|
| `tuple`, `set`, `frozenset`        | `tuple` ...  | a list of the items                  |
| dict with a non-string key         | `dict`       | a list of `[key, value]` pairs       |
| `bytes`, `bytearray`               | `bytes` ...  | base64                               |
| `datetime`, `date`, `time`         | `datetime`.. | ISO 8601 (the UTC offset is kept)    |
| `timedelta`                        | `timedelta`  | `[days, seconds, microseconds]`      |
| `Decimal`, `UUID`                  | `decimal`..  | their string form                    |
| an `Enum` member                   | `enum`       | the class and the member's value     |
| a dataclass instance               | `dataclass`  | the class and its fields             |
| a pydantic model                   | `pydantic`   | the class and its JSON, by alias     |

Classes are named `module:QualName` and looked up on replay among the modules already imported
(retrysafe never imports a module because stored data names it), and only a dataclass, an `Enum`
or a pydantic model is rebuilt. A dataclass is rebuilt field by field without calling `__init__`,
as `pickle` does. A pydantic model is stored only if its JSON validates back into an equal model
(a `SecretStr` is masked in it: such a model is not serializable). Subclasses of `str`, `int`,
`float`, `list` and `dict` that are none of these replay as their base type (equal, not the same
type); a named tuple replays as a tuple.

Anything else (an open file, a socket, a class defined inside a function) is not serializable:
`dumps` raises `TypeError`, and the decorator turns that into a stored `OutcomeError`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import decimal
import enum
import inspect
import json
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any, Final, Protocol, runtime_checkable

__all__ = [
    "ORDER_FREE_MODEL",
    "JSONSerializer",
    "Serializer",
    "canonical_bytes",
    "previous_canonical_bytes",
]

TAG = "$rs"

_JSONScalar = (str, int, float, bool, type(None))
_SCALARS = frozenset(_JSONScalar)  # exact types that are their own encoding
_STR = frozenset((str,))
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_canonical_encoder = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, sort_keys=True
)


@runtime_checkable
class Serializer(Protocol):
    """Turns a function's return value into bytes and back.

    `loads(dumps(value))` must equal `value`. `dumps` raises any exception for a value it cannot
    serialize; the decorator then stores a "not serializable" outcome instead of the value.
    """

    def dumps(self, value: object) -> bytes:
        """Return `value` as bytes."""
        ...

    def loads(self, data: bytes) -> object:
        """Return the value that `dumps` turned into `data`."""
        ...


class JSONSerializer:
    """The default serializer: JSON, with the tagged types in the module docstring."""

    def dumps(self, value: object) -> bytes:
        """Return `value` as UTF-8 JSON; raise `TypeError` for an unsupported type."""
        return _encoder.encode(_encode(value, False)).encode("utf-8", "surrogatepass")

    def loads(self, data: bytes) -> object:
        """Return the value that `dumps` turned into `data`."""
        return json.loads(data.decode("utf-8", "surrogatepass"), object_hook=_decode_tagged)


def canonical_bytes(value: object) -> bytes:
    """Return a canonical encoding of `value` for fingerprints.

    Equal values give equal bytes whatever their dict or set order; raises `TypeError` for an
    unsupported type, like `JSONSerializer.dumps`.
    """
    return _canonical_encoder.encode(_encode(value, True)).encode("utf-8", "surrogatepass")


ORDER_FREE_MODEL: Final = b'{"$rs":"pydantic-canonical",'
"""How a pydantic model in its order-free form starts in `canonical_bytes` (never a string's
content, in which the quotes would be escaped): only an encoding holding it can have another
form in the previous release (`previous_canonical_bytes`)."""


def previous_canonical_bytes(value: object) -> bytes:
    """Return the previous release's (0.1.0's) `canonical_bytes(value)` (B39).

    It differs from the current one only where `value` holds a pydantic model with a set whose
    order varies from one process to the next (`_order_varies`), which 0.1.0 encoded in the
    order it iterated: call it only for an encoding that holds `ORDER_FREE_MODEL`.
    """
    _form.previous = True
    try:
        return canonical_bytes(value)
    finally:
        _form.previous = False


_form = threading.local()
"""`previous`: encode models as 0.1.0 did, for `previous_canonical_bytes` (a flag of this
thread, set while one encoding runs, so no encoder's signature carries it)."""


def _tagged(tag: str, value: object) -> dict[str, object]:
    return {TAG: tag, "v": value}


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _sorted_if(items: list[Any], canonical: bool) -> list[Any]:
    # Sets and non-string-keyed dicts have no order of their own; fingerprints must not see one.
    if canonical:
        items.sort(key=_canonical_encoder.encode)
    return items


def _encode(value: object, canonical: bool) -> object:  # noqa: PLR0911, PLR0912 - one case per type
    """Return `value` as a tree of JSON-native values, tagging the others."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return _encode_items(value, canonical)  # type: ignore[arg-type]
    if kind is dict:
        return _encode_dict(value, canonical)  # type: ignore[arg-type]
    if kind is tuple:
        return _tagged("tuple", _encode_items(value, canonical))  # type: ignore[arg-type]
    if isinstance(value, enum.Enum):
        return _tagged("enum", [_type_name(kind), _encode(value.value, canonical)])
    if kind is set or kind is frozenset:
        items = _encode_items(value, canonical)  # type: ignore[arg-type]
        return _tagged(kind.__name__, _sorted_if(items, canonical))
    if kind is bytes or kind is bytearray:
        return _tagged(kind.__name__, base64.b64encode(value).decode("ascii"))  # type: ignore[arg-type]
    if kind is dt.datetime or kind is dt.date or kind is dt.time:
        return _tagged(kind.__name__, value.isoformat())  # type: ignore[attr-defined]
    if kind is dt.timedelta:
        return _tagged("timedelta", [value.days, value.seconds, value.microseconds])  # type: ignore[attr-defined]
    if kind is decimal.Decimal or kind is uuid.UUID:
        return _tagged(kind.__name__.lower(), str(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _tagged("dataclass", [_type_name(kind), _encode_dict(fields, canonical)])
    pydantic = sys.modules.get("pydantic")  # a pydantic model exists only if pydantic is loaded
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return _encode_model(value, canonical)
    # Subclasses of the JSON types replay as their base type: equal, if not the same class.
    for base in (bool, str, int, float):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, list | tuple):
        return _encode(list(value) if isinstance(value, list) else tuple(value), canonical)
    if isinstance(value, dict):
        return _encode_dict(dict(value), canonical)
    raise TypeError(
        f"A {_type_name(kind)} cannot be serialized by retrysafe's JSON serializer; return "
        "JSON values, dataclasses, pydantic models or the types listed in docs/functions.md, "
        "or pass serializer= a Serializer that can."
    )


def _encode_items(items: list[Any] | tuple[Any, ...] | set[Any], canonical: bool) -> list[Any]:
    # Scalars (most items) are tested inline: a call per item is what the encoding costs.
    return [item if type(item) in _SCALARS else _encode(item, canonical) for item in items]


def _encode_dict(value: dict[Any, Any], canonical: bool) -> object:
    if _STR.issuperset(map(type, value)) and TAG not in value:
        return {k: v if type(v) in _SCALARS else _encode(v, canonical) for k, v in value.items()}
    pairs = [[_encode(k, canonical), _encode(v, canonical)] for k, v in value.items()]
    return _tagged("dict", _sorted_if(pairs, canonical))


def _encode_model(model: Any, canonical: bool) -> object:
    """Return a pydantic model tagged: JSON that rebuilds it equal, or for a fingerprint, the
    previous release's encoding unless the model holds a set whose order varies between
    processes: then its items sorted, under a tag of its own (`previous_canonical_bytes` gives
    0.1.0's form too, B39)."""
    name = _type_name(type(model))
    if not canonical:
        return _tagged("pydantic", [name, _model_json(model)])
    if not getattr(_form, "previous", False):
        dumped = model.model_dump(mode="python")
        if _order_varies(dumped):
            canonical_dump = _canonical_dump(dumped)
            if canonical_dump is not None:  # a distinct tag: never equal to an older fingerprint
                return _tagged("pydantic-canonical", [name, canonical_dump])
    # B39: exactly the fingerprint of the previous release, stable for a model without such sets.
    return _tagged("pydantic", [name, model.model_dump_json()])


def _model_json(model: Any) -> str:
    """Return JSON that `_rebuild_model` turns back into an equal model; else raise TypeError.

    By alias first, which validation expects; by field name if only that comes back equal.
    """
    cls, tried, problem = type(model), "", ""
    for by_alias in (True, False):
        text: str = model.model_dump_json(by_alias=by_alias)
        if text == tried:
            continue
        tried = text
        try:
            if _rebuild_model(cls, text) == model:
                return text
            problem = "does not come back equal from its JSON"
        except ValueError as error:  # pydantic's ValidationError
            errors = getattr(error, "errors", None)  # where and why, without the input
            first: dict[str, Any] = errors()[0] if callable(errors) else {"loc": (), "msg": error}
            where = ".".join(map(str, first["loc"]))
            problem = f"cannot be rebuilt from its JSON ({where}: {first['msg']})"
    raise TypeError(
        f"The pydantic model {_type_name(cls)} {problem}: a field that JSON masks (a "
        "SecretStr) or changes (a lossy custom serializer) would replay as another value."
    )


def _rebuild_model(cls: Any, text: str) -> object:
    """Return the model `text` holds: by alias, as stored now, or by field name, as stored by
    the previous release (pydantic 2.11 or later; earlier ones refuse it, as they did)."""
    try:
        return cls.model_validate_json(text)
    except ValueError:
        if "by_name" not in inspect.signature(cls.model_validate_json).parameters:
            raise
        return cls.model_validate_json(text, by_alias=True, by_name=True)


def _order_varies(dumped: object) -> bool:
    """Return whether a model's python dump holds, anywhere (a nested model is a dict in the
    dump), a set of two items or more whose order may differ between processes: one with an
    item whose hash the process salts (a str, bytes, a date, an enum member...). A set of
    numbers or UUIDs iterates in an order its items (and the order they were added) fix, the
    same in every process: 0.1.0 encoded it in that order, and so does this release (B39)."""
    pending = [dumped]
    while pending:
        value = pending.pop()
        if isinstance(value, set | frozenset):
            if len(value) > 1 and not all(map(_hashed_alike, value)):
                return True
            pending.extend(value)
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)
    return False


_UNSALTED: Final = frozenset((int, bool, float, decimal.Decimal, uuid.UUID))
"""Types whose hash is the same in every process (None's is not before Python 3.12)."""


def _hashed_alike(item: object) -> bool:
    """Whether `item` hashes alike in every process: a number, a UUID, or a tuple of them."""
    if type(item) is tuple:
        return all(map(_hashed_alike, item))
    return type(item) in _UNSALTED


def _canonical_dump(dumped: object) -> object | None:
    """Return a model's python dump encoded canonically; values that cannot be (a URL, a path)
    in pydantic's JSON form; None if even that fails."""
    with contextlib.suppress(TypeError, ValueError, RecursionError):
        return _encode(dumped, True)
    with contextlib.suppress(TypeError, ValueError, RecursionError):
        return _encode(_jsonable_leaves(dumped), True)
    return None


def _jsonable_leaves(value: object) -> object:
    """Return `value` with what `_encode` cannot take in pydantic's JSON form."""
    kind = type(value)
    if kind is dict:
        return {_jsonable_leaves(k): _jsonable_leaves(v) for k, v in value.items()}  # type: ignore[attr-defined]
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        return kind(map(_jsonable_leaves, value))  # type: ignore[call-overload]
    try:
        _encode(value, True)
    except (TypeError, ValueError, RecursionError):
        return sys.modules["pydantic_core"].to_jsonable_python(value)
    return value


def _find_class(name: str, check: Callable[[type], bool]) -> type:
    """Return the class `module:QualName` from an imported module, if it passes `check`."""
    module_name, _, qualname = name.partition(":")
    found: object = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, type) or not check(found):
        raise TypeError(
            f"Cannot rebuild a stored {name}: no such class among the imported modules "
            "(classes defined inside functions cannot be replayed)."
        )
    return found


def _is_pydantic_model(cls: type) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and issubclass(cls, pydantic.BaseModel)


def _rebuild_dataclass(name: str, fields: dict[str, Any]) -> object:
    cls = _find_class(name, dataclasses.is_dataclass)
    instance: object = object.__new__(cls)
    for field, value in fields.items():
        object.__setattr__(instance, field, value)  # frozen and slotted dataclasses too
    return instance


_DECODERS: dict[str, Callable[[Any], object]] = {
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "dict": dict,
    "bytes": base64.b64decode,
    "bytearray": lambda text: bytearray(base64.b64decode(text)),
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda parts: dt.timedelta(*parts),
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
    "enum": lambda pair: _find_class(pair[0], lambda c: issubclass(c, enum.Enum))(pair[1]),
    "dataclass": lambda pair: _rebuild_dataclass(pair[0], pair[1]),
    "pydantic": lambda pair: _rebuild_model(_find_class(pair[0], _is_pydantic_model), pair[1]),
}


def _decode_tagged(obj: dict[str, Any]) -> object:
    tag = obj.get(TAG)
    if tag is None:
        return obj
    decoder = _DECODERS.get(tag)
    if decoder is None or len(obj) != 2 or "v" not in obj:
        raise ValueError(f"Unknown tagged value {obj!r} in a stored outcome.")
    return decoder(obj["v"])


def _json_bytes(payload: object) -> bytes:
    return _encoder.encode(payload).encode("utf-8", "surrogatepass")
