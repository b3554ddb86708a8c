"""Every built-in exception class replays as its own class, with its args and message (B28)."""

from __future__ import annotations

import builtins
import json
from typing import Any

import pytest

from retrysafe import Store
from retrysafe._decorator import idempotent

# Arguments to try, in order, until a class takes them: the message most take, then the
# fields of the Unicode errors, SyntaxError's details, and an exception group's exceptions.
CANDIDATE_ARGS: tuple[tuple[Any, ...], ...] = (
    ("boom",),
    ("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ("ascii", "\xe9", 0, 1, "ordinal not in range(128)"),
    ("\xe9", 0, 1, "cannot translate"),
    ("never closed", ("f.py", 1, 2, "(", 1, 2)),
    ("several failed", [ValueError("inner")]),
)


def built_in_exceptions() -> list[Exception]:
    """One instance of every `Exception` subclass in `builtins`, made from candidate args."""
    made = []
    for name in sorted(dir(builtins)):
        cls = getattr(builtins, name)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            continue
        for args in CANDIDATE_ARGS:
            try:
                made.append(cls(*args))
                break
            except Exception:  # noqa: S112 - not these args: the next candidate
                continue
        else:
            pytest.fail(f"no candidate args construct {name}")
    return made


def raised_errors() -> list[Exception]:
    """Errors as Python raises them: decoding, encoding, compiling, parsing JSON."""
    errors: list[Exception] = []
    for fail in (
        b"\xff".decode,
        lambda: "\xe9".encode("ascii"),
        lambda: compile("(", "f.py", "exec"),
        lambda: json.loads("{bad"),
    ):
        try:
            fail()
        except Exception as error:
            errors.append(error)
    return errors


def replayed(store: Store, error: Exception, namespace: str) -> tuple[Exception, Exception]:
    """Raise `error` as a final exception, then call again: return what each call raised."""

    @idempotent(store, key="key", namespace=namespace, final_exceptions=(Exception,))
    def fail(key: str) -> None:
        raise error

    caught = []
    for _ in range(2):
        with pytest.raises(Exception) as raised:  # noqa: PT011 - any class: it is compared
            fail("k")
        caught.append(raised.value)
    return caught[0], caught[1]


def test_b28_every_built_in_exception_replays_as_its_class(store: Store) -> None:
    """Each built-in exception (UnicodeDecodeError, SyntaxError, OSError...) replays as its
    own class with the first's args and str(), never as OutcomeError."""
    errors = built_in_exceptions() + raised_errors()
    assert len(errors) > 60  # every built-in class was made
    for n, error in enumerate(errors):
        first, replay = replayed(store, error, f"builtin.{n}")
        assert first is error
        assert type(replay) is type(error), (error, replay)
        assert str(replay) == str(error)
        assert repr(replay.args) == repr(error.args)  # an exception group's hold exceptions


def test_b28_built_in_exceptions_keep_their_fields(store: Store) -> None:
    """A replayed UnicodeDecodeError and SyntaxError keep the fields their message formats."""
    decode, _, syntax, _ = raised_errors()
    replay = replayed(store, decode, "builtin.decode")[1]
    assert isinstance(replay, UnicodeDecodeError)
    assert (replay.encoding, replay.object, replay.start, replay.end) == ("utf-8", b"\xff", 0, 1)
    assert replay.reason == "invalid start byte"
    replay = replayed(store, syntax, "builtin.syntax")[1]
    assert isinstance(replay, SyntaxError)
    fields = ("filename", "lineno", "offset", "text", "end_lineno", "end_offset")
    assert [getattr(replay, name) for name in fields] == [getattr(syntax, name) for name in fields]
