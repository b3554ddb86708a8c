"""The stored outcome of a decorated call, and its replay (B27, B28).

An outcome is one tag byte, then its payload: the serializer's bytes for a return value (`R`);
JSON for a final exception (`E`): its class, arguments, message and attributes, and for an
exception group its sub-exceptions, each stored the same way; or JSON for a return value that
could not be serialized (`U`).

A final exception is one whose type is in `final_exceptions`, or an exception group whose
every sub-exception is, as `except*` would match it (`is_final`): a `TaskGroup` in the function
wraps what its tasks raise in one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
from typing import Any, Final, cast

from retrysafe._errors import OutcomeError
from retrysafe._serializer import (
    Serializer,
    _decode_tagged,
    _encode,
    _encode_dict,
    _find_class,
    _json_bytes,
    _type_name,
)

__all__ = ["Deferred", "Outcomes", "is_final", "is_stored"]

_RETURNED = b"R"  # the serializer's bytes for the return value
_RAISED = b"E"  # JSON: a final exception's class, arguments, message and attributes
_UNSERIALIZABLE = b"U"  # JSON: the return value's class and why it could not be serialized
_REPLAYED = "retrysafe: replayed from the first call with this key."


_NESTING: Final = 32
"""How deep groups may nest to be judged final, and stored whole: deeper ones are raised as
they are and release the key, on every Python (whose recursion limits differ)."""


class Deferred(Exception):  # noqa: N818 - what the call did, not an error it met
    """A call that put its work off (a JetStream handler that `nak`ed its own delivery): it
    releases the key, so the retry it asked for runs, whatever `final_exceptions` lists."""


def is_final(error: BaseException, final_exceptions: tuple[type[BaseException], ...]) -> bool:
    """Return whether `error` is stored as the outcome rather than releasing the key: an
    instance of `final_exceptions`, or a group whose every sub-exception is one."""
    if isinstance(error, Deferred):
        return False
    if isinstance(error, final_exceptions):
        return True
    if not isinstance(error, BaseExceptionGroup):
        return False
    groups = [(error, 1)]
    while groups:
        group, depth = groups.pop()
        for sub in group.exceptions:
            if isinstance(sub, final_exceptions):
                continue
            if not isinstance(sub, BaseExceptionGroup) or depth == _NESTING:
                return False
            groups.append((sub, depth + 1))
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class Outcomes:
    """How one decorated function's outcomes are stored and replayed.

    Attributes:
        serializer: turns return values into bytes and back.
        final_exceptions: the exception types stored as outcomes; only these (and their
            subclasses, and groups of them) are rebuilt on replay.
        name: the function's namespace, for error messages.
    """

    serializer: Serializer
    final_exceptions: tuple[type[BaseException], ...]
    name: str

    def returned(self, value: object) -> tuple[bytes, OutcomeError | None]:
        """Return the outcome to store for `value`, and the error to raise if not serializable.

        A value that cannot be serialized is stored as such and raises `OutcomeError` now and
        on every replay: the call's effect has happened, so releasing the key (and running it
        again on retry) would break the invariant.
        """
        try:
            return _RETURNED + self.serializer.dumps(value), None
        except Exception as error:  # any serializer failure means the same
            problem = OutcomeError(
                f"The result of {self.name} (of type {type(value).__name__}) cannot be "
                f"serialized: {str(error).rstrip('.')}. It is stored as not serializable and "
                "never run again."
            )
            problem.__cause__ = error
            payload = {"type": _type_name(type(value)), "error": f"{type(error).__name__}: {error}"}
            return _UNSERIALIZABLE + _json_bytes(payload), problem

    def raised(self, error: BaseException) -> bytes:
        """Return the outcome to store for a final exception: class, args, message, attributes
        (and the sub-exceptions of a group). `error` is marked as stored (`is_stored`)."""
        outcome = _RAISED + _json_bytes(_raised_payload(error))
        _mark_stored(error)
        return outcome

    def replay(self, outcome: bytes) -> object:
        """Return the stored return value, or raise the stored exception."""
        kind = outcome[:1]
        try:
            if kind == _RETURNED:
                return self.serializer.loads(outcome[1:])
            payload: dict[str, Any] = json.loads(
                outcome[1:].decode("utf-8", "surrogatepass"), object_hook=_decode_tagged
            )
        except Exception as error:
            raise OutcomeError(
                f"The stored outcome of {self.name} cannot be read: {error}"
            ) from error
        if kind == _UNSERIALIZABLE:
            raise OutcomeError(
                f"The first call of {self.name} with this key returned a {payload['type']}, "
                f"which could not be serialized ({payload['error']}); it is not run again."
            )
        if kind == _RAISED:
            raise _mark_stored(self._rebuild(payload))
        raise OutcomeError(f"The stored outcome of {self.name} has an unknown format.")

    def _rebuild(self, payload: dict[str, Any]) -> BaseException:
        try:
            error = _rebuilt(payload, self.final_exceptions)
            error.add_note(_REPLAYED)
        except _UnbuiltError as unbuilt:
            return unbuilt.error(self.name)
        except Exception as problem:  # any other failure (too deep, say) means the same
            return _UnbuiltError(payload, problem).error(self.name)
        return error


_STORED_MARK: Final = "_retrysafe_stored"


def _mark_stored(error: BaseException) -> BaseException:
    """Mark `error` as a stored outcome, raised now and on every replay; return it."""
    with contextlib.suppress(AttributeError, TypeError):  # a class that refuses attributes
        setattr(error, _STORED_MARK, True)
    return error


def is_stored(error: BaseException) -> bool:
    """Whether `error` is a final exception stored as its call's outcome (raised first, or
    replayed): a redelivery of its message would raise it again, never anything else."""
    return getattr(error, _STORED_MARK, False) is True


def _raised_payload(error: BaseException, depth: int = 1) -> dict[str, Any]:
    """Return what is stored of `error`; of a group, what it holds too, down to `_NESTING`
    levels (a listed group type's deeper groups are kept as their class and message alone)."""
    payload: dict[str, Any] = {
        "type": _type_name(type(error)),
        "args": None,  # replayed with the message as its only argument
        "message": str(error),
        "attrs": _exception_attributes(error),
    }
    slots = _slot_attributes(error)
    if slots:  # only then: an exception without slots is stored as the previous release did
        payload["slots"] = _encode_dict(slots, False)
    if isinstance(error, BaseExceptionGroup) and depth <= _NESTING:
        payload["message"] = error.message
        payload["group"] = [_raised_payload(sub, depth + 1) for sub in error.exceptions]
        return payload
    with contextlib.suppress(TypeError, ValueError, RecursionError):  # else None, as above
        payload["args"] = _encode(error.args, False)
    return payload


class _UnbuiltError(Exception):
    """A stored exception that cannot be rebuilt on replay, and why."""

    def __init__(self, payload: dict[str, Any], problem: BaseException | None = None) -> None:
        super().__init__(payload.get("type"))
        self.payload, self.problem = payload, problem

    def reason(self) -> str:
        """Say why: its class is no longer final here, or rebuilding it failed."""
        payload, problem = self.payload, self.problem
        if problem is None:
            return "is no longer a final exception type here"
        alone = (
            " from its message alone"
            if payload.get("args") is None and "group" not in payload
            else ""
        )
        return f"cannot be rebuilt{alone} on replay: {problem}"

    def error(self, name: str) -> OutcomeError:
        """Return the `OutcomeError` the replay raises instead."""
        kind, message = self.payload.get("type"), self.payload.get("message")
        unbuilt = OutcomeError(
            f"The first call of {name} raised {kind} ({message}), which {self.reason()}."
        )
        unbuilt.__cause__ = self.problem
        return unbuilt


def _rebuilt(
    payload: dict[str, Any], final_exceptions: tuple[type[BaseException], ...]
) -> BaseException:
    """Return the exception `payload` stored, if its class is still final here; else raise
    `_UnbuiltError`. A group is final if its class is listed, or if its sub-exceptions are."""
    group = payload.get("group")
    final = final_exceptions if group is None else (BaseExceptionGroup,)
    try:
        cls = _find_class(payload["type"], lambda c: issubclass(c, final))
    except TypeError:
        raise _UnbuiltError(payload) from None
    if group is None:
        args = tuple(payload["args"]) if payload["args"] is not None else (payload["message"],)
    else:  # a listed group type replays whatever it holds; else each must be final here
        inner = (BaseException,) if issubclass(cls, final_exceptions) else final_exceptions
        try:
            args = (payload["message"], [_rebuilt(sub, inner) for sub in group])
        except _UnbuiltError as unbuilt:  # named in the group's own error
            held = unbuilt.payload
            reason = f"the {held['type']} ({held['message']}) in it {unbuilt.reason()}"
            raise _UnbuiltError(payload, ValueError(reason)) from None
    try:
        if "attrs" not in payload:
            return _exception_from_init(cls, args)  # B39: stored before attributes were kept
        kept = (args, payload["attrs"], payload.get("slots", {}))
        error = _new_exception(cls, *kept)
        if group is not None or _says(error, payload["message"]):
            return error
        # A class whose `__str__` formats an attribute that could not be stored (a response
        # object) would say something else, or raise: replayed as a subclass that says it.
        return _new_exception(_telling(cls, payload["message"]), *kept)
    except Exception as problem:  # any failure means the same: it cannot be rebuilt
        raise _UnbuiltError(payload, problem) from None


def _says(error: BaseException, message: str) -> bool:
    """Whether `str(error)` is `message` (a `__str__` that raises does not say it)."""
    try:
        return str(error) == message
    except Exception:  # any failure of a class's own __str__ means the same
        return False


def _telling(cls: type[BaseException], message: str) -> type[BaseException]:
    """Return a subclass of `cls`, named as it is, whose `str()` is `message`."""
    namespace = {"__slots__": (), "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls,), {**namespace, "__str__": lambda _: message})


# An OSError keeps these in slots, not in its __dict__; its str() is made of them.
_OS_ERROR_SLOTS = frozenset(("errno", "strerror", "filename", "filename2", "characters_written"))
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE, a class written in Python, as `copyreg` tests it


def _encodable(value: object) -> bool:
    try:
        _encode(value, False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _exception_attributes(error: BaseException) -> object:
    """Return the instance attributes of `error` that can be encoded, encoded; skip the rest."""
    kept = {
        k: v
        for k, v in vars(error).items()
        if isinstance(k, str) and k != _STORED_MARK and _encodable(v)
    }
    if isinstance(error, OSError):
        for name in _OS_ERROR_SLOTS:
            value = getattr(error, name, None)  # characters_written raises when unset
            if value is not None and _encodable(value):
                kept[name] = value
    return _encode_dict(kept, False)


def _slot_descriptors(cls: type) -> dict[str, types.MemberDescriptorType]:
    """Return the attributes that `__slots__` declare in `cls` and its bases, by name."""
    found: dict[str, types.MemberDescriptorType] = {}
    for klass in cls.__mro__:
        declared = klass.__dict__.get("__slots__", ())
        for name in (declared,) if isinstance(declared, str) else declared:
            private = name.startswith("__") and not name.endswith("__")
            attribute = f"_{klass.__name__.lstrip('_')}{name}" if private else name  # mangled
            descriptor = klass.__dict__.get(attribute)
            if isinstance(descriptor, types.MemberDescriptorType):  # not __dict__, __weakref__
                found.setdefault(attribute, descriptor)  # the nearest class's slot is the one
    return found


def _slot_attributes(error: BaseException) -> dict[str, object]:
    """Return the slot attributes set on `error` that can be encoded (B28: `vars` misses them)."""
    kept: dict[str, object] = {}
    for name, descriptor in _slot_descriptors(type(error)).items():
        try:
            value = descriptor.__get__(error, type(error))
        except AttributeError:  # declared but never set
            continue
        if _encodable(value):
            kept[name] = value
    return kept


def _new_exception(
    cls: type[BaseException],
    args: tuple[Any, ...],
    attrs: dict[str, Any],
    slots: dict[str, Any],
) -> BaseException:
    """Return a `cls` with these `args` and attributes, without running its `__init__` (but
    a built-in class's own, which takes its `args` and sets what its `str()` reads)."""
    error = _built_in(cls, args)
    if error is None:
        # As copyreg does, the nearest class written in C makes the instance: neither the
        # class's own __new__ nor its __init__ runs with the stored args, which are not what
        # they take.
        base = next(c for c in cls.__mro__ if not c.__flags__ & _HEAPTYPE)
        error = cast(BaseException, cast(Any, base).__new__(cls, *args))
    error.args = args
    for name, value in attrs.items():
        if name in _OS_ERROR_SLOTS and isinstance(error, OSError):
            setattr(error, name, value)
        elif name != "__notes__" or isinstance(value, list):  # add_note needs a list
            vars(error)[name] = value
    descriptors = _slot_descriptors(cls)
    for name, value in slots.items():
        if name in descriptors:  # as the instance had it, past any __setattr__ of the class
            descriptors[name].__set__(error, value)
        else:  # no longer a slot of the class: an attribute all the same
            vars(error)[name] = value
    return error


def _built_in(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException | None:
    """Return `cls(*args)` for a built-in `cls` (a `UnicodeDecodeError`, a `SyntaxError`, whose
    `__init__` sets the fields its `str()` formats), or None: a class written in Python, or
    args it refuses (stored as the message alone)."""
    if cls.__flags__ & _HEAPTYPE:
        return None
    try:
        error = cls(*args)
    except Exception:  # args it does not take: built without its __init__, as any other
        return None
    return error if type(error) is cls else None  # OSError(2, ...) makes a FileNotFoundError


def _exception_from_init(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """Return `cls(*args)` if its `__init__` gives the same args back, else one without it."""
    try:
        error = cls(*args)
    except Exception:  # an __init__ that takes other arguments
        return _new_exception(cls, args, {}, {})
    return error if type(error) is cls and error.args == args else _new_exception(cls, args, {}, {})
