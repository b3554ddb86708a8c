"""Stored outcomes as JSON-ready data, for `keys show`: a decoded HTTP response, a decorated
function's outcome decoded from the serializer's form, or the raw bytes.

A decorator's outcome is one tag byte and a payload (`retrysafe._outcomes.Outcomes`):
`R` and the serializer's bytes for a return value, `E` and JSON for a final exception, `U` and
JSON for a value that could not be serialized. The default serializer's tagged values
(`{"$rs": TAG, "v": ...}`) are turned back into what they hold. Nothing is imported because
stored data names it: a dataclass, an enum member or a pydantic model is shown by its class
name and fields, never rebuilt.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
from collections.abc import Callable
from typing import Any, Final

from retrysafe._errors import OutcomeError
from retrysafe._http import decode_outcome
from retrysafe._outcomes import _NESTING as NESTING
from retrysafe._serializer import _DECODERS as DECODERS
from retrysafe._serializer import TAG

__all__ = ["describe_outcome"]

# The tag bytes of `_outcomes.Outcomes` (tests/cli round-trip through it, so they stay equal).
_DECORATOR_KINDS: Final = {b"R": "returned", b"E": "raised", b"U": "unserializable"}
# Tagged types that are safe to rebuild here: the standard library's, never a named class.
# The containers hold tagged values of their own, rebuilt here too; the leaves are decoded as
# the serializer decodes them.
_LEAVES: Final = ("bytes", "bytearray", "datetime", "date", "time", "timedelta", "decimal", "uuid")
_BUILT_INS: Final[dict[str, Callable[[Any], object]]] = {
    "tuple": lambda items: tuple(map(_python, items)),
    "set": lambda items: set(map(_python, items)),
    "frozenset": lambda items: frozenset(map(_python, items)),
    "dict": lambda pairs: {_python(k): _python(v) for k, v in pairs},
    **{tag: DECODERS[tag] for tag in _LEAVES},
}
_CLASSES: Final = frozenset({"enum", "dataclass", "pydantic"})  # shown by name, never rebuilt
_TYPE_NAMES: Final = {
    "datetime": "datetime.datetime",
    "date": "datetime.date",
    "time": "datetime.time",
    "timedelta": "datetime.timedelta",
    "decimal": "decimal.Decimal",
    "uuid": "uuid.UUID",
}


def describe_outcome(outcome: bytes) -> dict[str, object]:
    """Return a stored outcome as JSON-ready data: a decoded HTTP response, a decorator's
    decoded outcome, or the raw bytes."""
    decoded = _decode_http(outcome) or _decode_decorator(outcome)
    if decoded is not None:
        return decoded
    try:
        return {"kind": "raw", "text": outcome.decode("utf-8")}
    except UnicodeDecodeError:
        return {"kind": "raw", "base64": base64.b64encode(outcome).decode("ascii")}


def _decode_http(outcome: bytes) -> dict[str, object] | None:
    """Decode an outcome stored by the HTTP middleware, or None if it is not one."""
    try:
        response = decode_outcome(outcome)
    except OutcomeError:  # not an HTTP outcome (a decorator's return value, say)
        return None
    data: dict[str, object] = {
        "kind": "http",
        "status": response.status,
        "headers": [
            [name.decode("latin-1"), value.decode("latin-1")] for name, value in response.headers
        ],
    }
    if response.body_omitted:
        data["body_omitted"] = True
    try:
        data["body"] = response.body.decode("utf-8")
    except UnicodeDecodeError:
        data["body_base64"] = base64.b64encode(response.body).decode("ascii")
    return data


def _decode_decorator(outcome: bytes) -> dict[str, object] | None:
    """Decode a decorated function's outcome, or None if it is not one in JSON (another
    serializer's bytes, or an outcome written by something else, are shown raw)."""
    kind = _DECORATOR_KINDS.get(outcome[:1])
    if kind is None:
        return None
    try:
        tree = json.loads(outcome[1:].decode("utf-8", "surrogatepass"))
        if kind == "returned":
            return {
                "kind": kind,
                "type": _type_name(tree),
                "value": _plain(tree),
                "repr": repr(_python(tree)),
            }
        if kind == "raised":
            raised = {
                "kind": kind,
                "type": str(tree["type"]),
                "message": str(tree["message"]),
                "args": _plain(tree["args"]),
            }
            if "group" in tree:  # an exception group: what it held, a line each
                raised["exceptions"] = "\n".join(_held(tree["group"], 0)[:_HELD_LINES])
            return raised
        return {"kind": kind, "type": str(tree["type"]), "error": str(tree["error"])}
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, decimal.InvalidOperation):
        return None


_HELD_LINES: Final = 200  # the exceptions of a group shown at most


def _held(group: list[dict[str, Any]], depth: int) -> list[str]:
    """Return a line for each exception in a stored group, `class: message`, indented by
    nesting, a nested group's own exceptions under it, down to the depth retrysafe stores."""
    lines = []
    for held in group:
        lines.append(f"{'  ' * depth}{held['type']}: {held['message']}")
        if "group" in held and depth < NESTING:  # no deeper than retrysafe stores them
            lines += _held(held["group"], depth + 1)
    return lines


def _tagged(node: object) -> tuple[str, Any] | None:
    """Return (tag, value) of a serializer-tagged object, or None for any other node.

    Raises:
        ValueError: a tag the serializer never writes (as its `loads` would).
    """
    if not (isinstance(node, dict) and TAG in node):
        return None
    tag = node[TAG]
    if len(node) != 2 or "v" not in node or (tag not in _BUILT_INS and tag not in _CLASSES):
        raise ValueError(f"unknown tagged value {node!r}")
    return tag, node["v"]


def _type_name(node: object) -> str:
    tagged = _tagged(node)
    if tagged is None:
        return "None" if node is None else type(node).__name__
    tag, value = tagged
    if tag in _CLASSES:
        return str(value[0])
    return _TYPE_NAMES.get(tag, tag)


def _walk(node: object, tagged_value: Callable[[str, Any], object]) -> object:
    """Return `node` with lists and dicts walked, and each tagged value as `tagged_value` makes
    it from its tag and payload."""
    if isinstance(node, list):
        return [_walk(item, tagged_value) for item in node]
    tagged = _tagged(node)
    if tagged is None:
        if isinstance(node, dict):
            return {k: _walk(v, tagged_value) for k, v in node.items()}
        return node
    return tagged_value(*tagged)


def _plain(node: object) -> object:
    """Return `node` as plain JSON: each tagged value as its JSON-native form."""
    return _walk(node, _plain_tagged)


def _plain_tagged(tag: str, value: Any) -> object:
    # bytes (base64), dates and times (ISO 8601), Decimal and UUID are strings already.
    return _PLAIN.get(tag, _as_is)(value)


def _as_is(value: object) -> object:
    return value


def _items(items: list[Any]) -> object:
    return [_plain(item) for item in items]


def _pairs(pairs: list[list[Any]]) -> object:
    # A dict with a "$rs" key is tagged too; its keys are strings, so it stays a JSON object.
    if all(isinstance(key, str) for key, _ in pairs):
        return {key: _plain(value) for key, value in pairs}
    return [[_plain(key), _plain(value)] for key, value in pairs]


def _fields(pair: list[Any]) -> object:
    return _plain(pair[1])  # [class name, value or fields]


_PLAIN: Final[dict[str, Callable[[Any], object]]] = {
    "tuple": _items,
    "set": _items,
    "frozenset": _items,
    "dict": _pairs,
    "enum": _fields,
    "dataclass": _fields,
    "pydantic": lambda pair: json.loads(pair[1]),
    "timedelta": lambda parts: dt.timedelta(*parts).total_seconds(),
}


class _Shown:
    """A stand-in for an instance of a class that is not imported here: its repr only."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _python(node: object) -> object:
    """Return the value `node` holds, as far as it can be rebuilt without importing anything."""
    return _walk(node, _python_tagged)


def _python_tagged(tag: str, value: Any) -> object:
    build = _BUILT_INS.get(tag)
    if build is not None:
        return build(value)
    name = str(value[0]).rpartition(":")[2]  # `module:QualName`
    if tag == "enum":
        return _Shown(f"{name}({_python(value[1])!r})")
    fields = json.loads(value[1]) if tag == "pydantic" else value[1]
    if not isinstance(fields, dict):
        raise TypeError(f"the fields of a {tag} are not an object: {fields!r}")
    shown = ", ".join(f"{field}={_python(item)!r}" for field, item in fields.items())
    return _Shown(f"{name}({shown})")
