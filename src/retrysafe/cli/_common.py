"""What every command shares: one-line errors, JSON output, literal text, durations and sizes."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from retrysafe._errors import ConfigurationError, IdempotencyError
from retrysafe.observe._text import printable

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
    "json_text",
    "literal",
    "parse_duration",
    "print_json",
    "unescape",
    "warn",
]

EXIT_FAILURE = 1  # the command ran and something is wrong: unreachable store, no such key
EXIT_USAGE = 2  # the command line is wrong: bad option, bad store URL (click uses 2 too)
EXIT_INTERRUPTED = 130  # Ctrl+C stopped a command that runs to its end (128 + SIGINT)

console = Console(highlight=False)
_error_console = Console(stderr=True, highlight=False)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def literal(value: object) -> Text:
    """Return `value` as text printed exactly as it is: no markup, control characters escaped.

    Stored values (keys, scopes, bodies) are chosen by HTTP clients, so the console must never
    read them as Rich markup or emoji codes, nor pass ESC, CR, BEL or a bidi override to the
    terminal: they come out as Python writes them (`\\x1b`, `\\r`, `\\x07`, `\\u202e`), while
    printable Unicode stays as it is (SPEC B35).
    """
    return Text(printable(str(value)))


def warn(message: str) -> None:
    """Print `warning: message` on one line of stderr, the message literally."""
    _error_console.print(
        Text.assemble(("warning:", "bold yellow"), " ", literal(message)), soft_wrap=True
    )


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
    except (ConfigurationError, typer.BadParameter) as error:  # a bad option: a usage error
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
    sys.stdout.write(json_text(data, indent=2) + "\n")
    sys.stdout.flush()


def json_text(data: object, *, indent: int | None = None) -> str:
    """Return `data` as standard JSON, whatever a stored value holds: ASCII, every other
    character as a `\\u` escape (so a key that holds a lone surrogate, which no UTF-8 encoder
    takes, is written too), and a float JSON cannot hold (a function returned `inf` or `nan`)
    as the string `"Infinity"`, `"-Infinity"` or `"NaN"`."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(_finite(data), indent=indent, separators=separators, allow_nan=False)


def _finite(data: object) -> object:
    if isinstance(data, float) and not math.isfinite(data):
        return _NON_FINITE.get(data, "NaN")
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(value) for value in data]
    return data


def unescape(text: str, option: str = "--escaped") -> str:
    """Return `text` with its backslash escapes read as Python and JSON write them (`\\n`,
    `\\x00`, `\\u202e`, `\\ud800`, `\\\\` for a backslash), so that a key a terminal cannot
    carry (a control character, a lone surrogate) can be typed; a surrogate pair written as
    two escapes is one character, as in JSON. A malformed escape fails (exit 2), naming
    `option`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unknown escape (`\\q`) is a mistake here
            read = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except (UnicodeDecodeError, DeprecationWarning) as error:
        fail(f"{option} {text!r} has a malformed escape ({error}).", EXIT_USAGE)
    return read.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def parse_duration(text: str) -> float:
    """Return the seconds in `90`, `90s`, `15m`, `2h`, `1d` or `1h30m`: a finite number, not
    negative (`nan`, `inf`, `1e400` or `-5` is not a duration)."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        matches = list(_DURATION.finditer(value))
        if matches and "".join(m.group(0) for m in matches) == value:
            seconds = sum(float(m.group(1)) * _UNITS[m.group(2)] for m in matches)
        else:
            seconds = math.nan
    if not (0 <= seconds < math.inf):
        raise typer.BadParameter(f"{text!r} is not a duration; try 90s, 15m, 2h, 1d or 1h30m.")
    return seconds


def human_duration(seconds: float) -> str:
    """Return `seconds` as `45s`, `3m 20s`, `5h 02m` or `2d 04h` (`inf`, `nan` as they are)."""
    if not math.isfinite(seconds):  # a record no face writes: shown, never a crash
        return str(seconds)
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
    handler.setFormatter(_PrintableFormatter(line))
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


class _PrintableFormatter(logging.Formatter):
    """A record whose message and traceback have their control characters written as escapes:
    a warning may quote a stored value or a remote error (a topic, a broker's reply, a step's
    error), which must neither steer the terminal nor start a line of its own (SPEC B35)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        """Return the record's line, its message escaped."""
        escaped = logging.makeLogRecord(record.__dict__)
        escaped.message = printable(record.message)
        return super().formatMessage(escaped)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        """Return the traceback, each of its lines escaped."""
        return "\n".join(map(printable, super().formatException(ei).split("\n")))
