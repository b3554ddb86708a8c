"""Frozen slotted dataclasses that every request creates, built in a third of the time.

The values retrysafe passes around are frozen slotted dataclasses (STYLE 6), and a request
creates several: its identity, the claimed and the completed record, the claim, the admission.
The `__init__` that `dataclass(frozen=True)` generates sets each field with
`object.__setattr__(self, name, value)`, which looks the name up on the type at every call:
about 120 ns a field, 1 µs for a record. `quick_init` gives such a class an `__init__` that
sets each slot through its descriptor instead (about 40 ns a field), with the same signature,
defaults and `__post_init__`. The class stays a frozen dataclass: `dataclasses.replace`,
`fields`, equality, hashing and `FrozenInstanceError` on assignment are untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["quick_init"]

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """Replace the `__init__` of `cls`, a frozen slotted dataclass, by a faster equivalent."""
    params = dataclasses.fields(cls)  # type: ignore[arg-type]
    if not (cls.__dataclass_params__.frozen and "__slots__" in cls.__dict__):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} is not a frozen slotted dataclass")
    namespace: dict[str, Any] = {}
    signature, body = [], []
    for field in params:
        if not field.init or field.kw_only or field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: only plain positional fields")
        name = field.name
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
        if field.default is dataclasses.MISSING:
            signature.append(name)
        else:
            namespace[f"_default_{name}"] = field.default
            signature.append(f"{name}=_default_{name}")
        body.append(f"    _set_{name}(self, {name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(signature)}):\n" + "\n".join(body) + "\n"
    exec(source, namespace)  # noqa: S102 - as `dataclasses` builds `__init__`, from field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
