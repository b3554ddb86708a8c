"""What every command shares: one-line errors, JSON output, literal text, durations and sizes."""

from __future__ import annotations

import json
import logging
import re
import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from retrysafe._errors import ConfigurationError, IdempotencyError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "DatabaseOption",
    "console",
    "errors_as_one_line",
    "fail",
    "human_bytes",
    "human_duration",
    "literal",
    "parse_duration",
    "print_json",
]

EXIT_FAILURE = 1  # the command ran and something is wrong: unreachable store, no such key
EXIT_USAGE = 2  # the command line is wrong: bad option, bad store URL (click uses 2 too)
EXIT_INTERRUPTED = 130  # Ctrl+C stopped a command that runs to its end (128 + SIGINT)

console = Console(highlight=False)
_error_console = Console(stderr=True, highlight=False)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Shown as escapes by `literal`: C0/C1 controls and DEL (Cc), format characters such as the bidi
# overrides U+202A-U+202E and U+2066-U+2069 or zero-width ones (Cf), lone surrogates (Cs), and
# the line and paragraph separators (Zl, Zp).
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def literal(value: object) -> Text:
    """Return `value` as text printed exactly as it is: no markup, control characters escaped.

    Stored values (keys, scopes, bodies) are chosen by HTTP clients, so the console must never
    read them as Rich markup or emoji codes, nor pass ESC, CR, BEL or a bidi override to the
    terminal: they come out as Python writes them (`\\x1b`, `\\r`, `\\x07`, `\\u202e`), while
    printable Unicode stays as it is (SPEC B35).
    """
    text = str(value)
    if not text.isprintable():  # repr writes each hidden character as its escape
        text = "".join(
            repr(char)[1:-1] if unicodedata.category(char) in _HIDDEN else char for char in text
        )
    return Text(text)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print `error: message` on one line of stderr, the message literally, and exit with `code`."""
    _error_console.print(
        Text.assemble(("error:", "bold red"), " ", literal(message)), soft_wrap=True
    )
    raise typer.Exit(code)


@contextmanager
def errors_as_one_line() -> Iterator[None]:
    """Turn any error raised inside into one clear line and a non-zero exit, never a traceback."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except ConfigurationError as error:
        fail(_one_line(error), EXIT_USAGE)
    except IdempotencyError as error:
        fail(_one_line(error))
    except OSError as error:
        fail(f"{_one_line(error)}")
    except Exception as error:
        # A driver error the store did not wrap (psycopg, redis): still one line, with its kind.
        fail(f"{type(error).__name__}: {_one_line(error)}")


def print_json(data: object) -> None:
    """Write `data` as indented JSON on stdout, for scripts (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def parse_duration(text: str) -> float:
    """Return the seconds in `90`, `90s`, `15m`, `2h`, `1d` or `1h30m`."""
    value = text.strip().lower()
    try:
        return float(value)
    except ValueError:
        pass
    matches = list(_DURATION.finditer(value))
    if not matches or "".join(m.group(0) for m in matches) != value:
        raise typer.BadParameter(f"{text!r} is not a duration; try 90s, 15m, 2h, 1d or 1h30m.")
    return sum(float(m.group(1)) * _UNITS[m.group(2)] for m in matches)


def human_duration(seconds: float) -> str:
    """Return `seconds` as `45s`, `3m 20s`, `5h 02m` or `2d 04h`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 or seconds == int(seconds) else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def human_bytes(size: int) -> str:
    """Return `size` as `512 B`, `3.4 KiB`, `1.2 MiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split("\n")[0].split())


DatabaseOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="RETRYSAFE_STORE",
        metavar="URL",
        help="The application's database, where its transactions write: sqlite:///path.db or "
        "postgresql://... (its table= option names the records table).",
    ),
]
"""`--store` of the commands that work on transactional mode's tables (complete, outbox-relay)."""


@contextmanager
def warnings_to_stderr(logger_name: str, line: str) -> Iterator[None]:
    """Show the warnings of `logger_name` on stderr, one `line` each (a logging format), while
    the command runs; not after it: a command run in-process (a test's `CliRunner`, a program)
    leaves no handler behind on a stream it no longer owns."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(line))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
