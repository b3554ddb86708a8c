"""Run the code blocks of README.md and docs/ as a reader would paste them, with Sybil.

Each page is one Sybil document: its blocks run in order, the Python ones in one namespace (a page
builds on its earlier blocks, as a reader's file would), in a process and a temporary directory
of its own (`python -m tests.docs.examples PAGE DIR`), so no page sees what another one set up:
a metrics registry, a logging handler, a tracer provider.

- `python` blocks run as written. A block that is deliberately a fragment (a view's body, a line
  that needs the reader's app) is marked `<!-- partial: why -->` just above it: it is compiled,
  as the body of an async function so `return` and `await` compile, and not run.
- `console` blocks: each `$ ` line is a command (a trailing `\\` continues it); the lines after it,
  up to the next command, are its expected output, compared with doctest's rules (`...` stands
  for anything, whitespace runs are one). A command ending in `&` is a server: it runs in the
  background until the first local URL it prints answers, the next commands talk to it, and at
  the end of the block it gets Ctrl+C and must exit 0, as docs/cli.md promises. Any other
  command must exit 0.
  A `partial` directive before a console or sh block makes it syntax-checked (`bash -n`) instead,
  with every `benchmarks/*.py` or `scripts/*.py` it names required to exist: the records of how
  a benchmark was measured, minutes long, are checked this way.
- `sh` blocks: every line that is not a comment is a command, run the same way, output not shown.
- `json` blocks must parse.
- `<!-- skip: next "why" -->` (Sybil's own directive) skips the next block, with the reason shown
  in the test report.

Service addresses in the blocks (`redis://localhost:6379/0`, `postgresql://app@db/app`...) are
swapped for the test services' (`Services`), so a block that needs a server gets a real one:
Redis database 14 (flushed before each page), a PostgreSQL database made for the page (a
`+driver` in the URL kept), the test Redis Cluster, the test RabbitMQ.
"""

from __future__ import annotations

import argparse
import dataclasses
import doctest
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
import unittest
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sybil import Document, Example, Region, Sybil
from sybil.parsers.abstract.lexers import LexerCollection
from sybil.parsers.markdown import CodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
PAGES = [
    name
    for name in ["README.md", *sorted(f"docs/{path.name}" for path in ROOT.glob("docs/*.md"))]
    if _FENCE.search((ROOT / name).read_text(encoding="utf-8"))
]

_REDIS = re.compile(r"redis://(?:localhost|127\.0\.0\.1|cache(?:\.internal)?|host):6379/\d+")
_REDIS_CLUSTER = re.compile(r"redis\+cluster://10\.0\.0\.1:7000,10\.0\.0\.2:7000/")
_POSTGRES = re.compile(
    r"postgres(?:ql)?(?P<driver>\+\w+)?://(?:[\w:]+@)?(?:db(?:\.internal)?|127\.0\.0\.1)/app\b"
)
_MYSQL = re.compile(
    r"mysql(?P<driver>\+\w+)?://(?:[\w:]+@)?(?:db(?:\.internal)?|localhost|127\.0\.0\.1)"
    r"(?::3306)?/(?:app|test)\b"
)
_AMQP = re.compile(r"amqp://guest:guest@(?:localhost|127\.0\.0\.1)(?::5672)?/")
_NATS = re.compile(r"nats://(?:localhost|127\.0\.0\.1):4222\b")
_URL = re.compile(r"http://(?:127\.0\.0\.1|localhost):\d+")
_SCRIPT = re.compile(r"(?<![\w/<])((?:benchmarks|scripts)/[\w/.-]+\.py)\b")
_OUTPUT = doctest.OutputChecker()
_OUTPUT_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
COMMAND_TIMEOUT = 60.0
SERVER_START_TIMEOUT = 30.0


def needs(text: str) -> set[str]:
    """The services (`redis`, `postgres`, `mysql`, `redis_cluster`, `rabbitmq`, `nats`) a page's
    blocks reach."""
    blocks = "\n".join(match.group(2) for match in _FENCE.finditer(text))
    found = set()
    if _REDIS.search(blocks):
        found.add("redis")
    if _POSTGRES.search(blocks):
        found.add("postgres")
    if _REDIS_CLUSTER.search(blocks):
        found.add("redis_cluster")
    if _MYSQL.search(blocks):
        found.add("mysql")
    if _AMQP.search(blocks):
        found.add("rabbitmq")
    if _NATS.search(blocks):
        found.add("nats")
    return found


@dataclass
class Services:
    """Where the blocks' service addresses point in this run."""

    redis: str | None = None  # "redis://HOST:PORT", no database
    postgres: str | None = None  # the page's own database
    redis_cluster: str | None = None  # "redis+cluster://HOST:PORT,.../", no query
    mysql: str | None = None  # the page's own database
    rabbitmq: str | None = None  # "amqp://USER:PASSWORD@HOST:PORT/"
    nats: str | None = None  # "nats://HOST:PORT"

    def apply(self, text: str) -> str:
        """`text` with every service address a block names swapped for this run's server."""
        if self.redis is not None:
            text = _REDIS.sub(f"{self.redis}/14", text)
        if self.postgres is not None:
            database = self.postgres.split("://", 1)[1]
            text = _POSTGRES.sub(lambda m: f"postgresql{m['driver'] or ''}://{database}", text)
        if self.mysql is not None:
            database = self.mysql.split("://", 1)[1]
            text = _MYSQL.sub(lambda m: f"mysql{m['driver'] or ''}://{database}", text)
        if self.rabbitmq is not None:
            text = _AMQP.sub(self.rabbitmq, text)
        if self.nats is not None:
            text = _NATS.sub(self.nats, text)
        if self.redis_cluster is not None:
            text = _REDIS_CLUSTER.sub(self.redis_cluster, text)
        return text


@dataclass
class Page:
    """The state one page's blocks share: where they run, the servers they started."""

    cwd: Path
    services: Services
    partial: set[int] = field(default_factory=set)  # documents whose next block is a fragment

    def take_partial(self, example: Example) -> bool:
        """Whether `example` is the fragment a `partial` directive announced (once only)."""
        if id(example.document) not in self.partial:
            return False
        self.partial.discard(id(example.document))
        return True

    def env(self) -> dict[str, str]:
        """The environment commands run in: this interpreter's `retrysafe` first on PATH."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["COLUMNS"] = "100"
        env.pop("CI", None)  # `make`-free commands; CI=true changes nothing they print
        return env


def _partial(page: Page) -> Callable[[Example], None]:
    def evaluate(example: Example) -> None:
        page.partial.add(id(example.document))

    return evaluate


class PartialParser:
    """`<!-- partial: why -->`: the next Python block is a fragment, compiled and not run."""

    def __init__(self, page: Page) -> None:
        self.lexers = LexerCollection([DirectiveInHTMLCommentLexer(directive="partial")])
        self.evaluate = _partial(page)

    def __call__(self, document: Document) -> Iterator[Region]:
        for lexed in self.lexers(document):
            yield Region(lexed.start, lexed.end, lexed.lexemes["arguments"], self.evaluate)


def run_python(page: Page) -> Callable[[Example], None]:
    def evaluate(example: Example) -> None:
        source = page.services.apply(str(example.parsed))
        padding = "\n" * (example.line + example.parsed.line_offset)
        if page.take_partial(example):
            body = "".join(f"    {line}\n" for line in source.splitlines())
            compile(f"{padding[1:]}async def _fragment():\n{body}", example.path, "exec")
            return
        code = compile(padding + source, example.path, "exec", dont_inherit=True)
        exec(code, example.namespace)  # noqa: S102 - the point: the reader's code, as pasted

    return evaluate


@dataclass
class Command:
    line: int
    text: str
    expected: str = ""

    @property
    def background(self) -> bool:
        return self.text.rstrip().endswith("&") and not self.text.rstrip().endswith("&&")


def console_commands(source: str, *, prompts: bool) -> list[Command]:
    """The commands of a console (`$ ` prompts, output after) or sh (every line) block."""
    commands: list[Command] = []
    continuing = False
    for number, line in enumerate(source.splitlines()):
        if continuing:
            commands[-1].text += "\n" + line
        elif prompts and line.startswith("$ "):
            commands.append(Command(number, line[2:]))
        elif prompts and commands:
            commands[-1].expected += line + "\n"
        elif not prompts and line.strip() and not line.lstrip().startswith("#"):
            commands.append(Command(number, line))
        continuing = (
            (not commands or not commands[-1].expected) and line.endswith("\\") and bool(commands)
        )
    return commands


class _Server:
    def __init__(self, command: Command, page: Page) -> None:
        self.command = command
        self.log = tempfile.TemporaryFile(mode="w+", dir=page.cwd)  # noqa: SIM115 - closed in stop()
        # The server writes through this file's own description, whose offset `output` moves
        # to read it: appending, every write lands at the end, never over what `output` read
        # (a server's first line was overwritten so, its URL lost, once in CI).
        flags = fcntl.fcntl(self.log.fileno(), fcntl.F_GETFL)
        fcntl.fcntl(self.log.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)
        self.process = subprocess.Popen(
            ["bash", "-c", command.text.rstrip().removesuffix("&")],
            cwd=page.cwd,
            env=page.env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl+C reaches the server
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_started(self) -> None:
        """Wait for the server's first line, then for an answer from the URL it names: it
        serves (so a Ctrl+C now is a stop, not an interrupted start)."""
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"`{self.command.text}` exited {self.process.returncode} instead of serving:\n"
                    f"{self.output()}"
                )
            url = _URL.search(self.output())
            if url is not None and _answers(url.group(0)):
                return
            time.sleep(0.05)
        raise AssertionError(
            f"`{self.command.text}` did not serve in {SERVER_START_TIMEOUT}s:\n{self.output()}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"`{self.command.text}` did not stop on Ctrl+C") from None
        finally:
            self.log.close()
        if code != 0:
            raise AssertionError(f"`{self.command.text}` exited {code} on Ctrl+C, not 0")


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at `url`'s address, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - a local server's URL
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def run_commands(commands: list[Command], page: Page, example: Example) -> None:
    servers: list[_Server] = []
    try:
        for command in commands:
            where = f"{example.path}:{example.line + command.line + 1}"
            if command.background:
                servers.append(_Server(command, page))
                servers[-1].wait_started()
                continue
            done = subprocess.run(
                ["bash", "-c", command.text],
                cwd=page.cwd,
                env=page.env(),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
            output = done.stdout + done.stderr
            if done.returncode != 0:
                raise AssertionError(
                    f"{where}: `{command.text}` exited {done.returncode}:\n{output}"
                )
            if command.expected.strip() and not _OUTPUT.check_output(
                command.expected, output, _OUTPUT_FLAGS
            ):
                raise AssertionError(
                    f"{where}: `{command.text}` printed\n{output}\nnot\n{command.expected}"
                )
    finally:
        for server in reversed(servers):
            server.stop()


def run_console(page: Page, *, prompts: bool) -> Callable[[Example], None]:
    def evaluate(example: Example) -> None:
        source = page.services.apply(str(example.parsed))
        if page.take_partial(example):
            syntax = subprocess.run(
                ["bash", "-n"], input=source, capture_output=True, text=True, check=False
            )
            assert syntax.returncode == 0, f"{example.path}:{example.line}: {syntax.stderr}"
            for script in _SCRIPT.findall(source):
                assert (ROOT / script).is_file(), f"{example.path}:{example.line}: no {script}"
            return
        run_commands(console_commands(source, prompts=prompts), page, example)

    return evaluate


def check_json(example: Example) -> None:
    json.loads(str(example.parsed))


class _Block:
    """A code block's evaluator; directives (skip, partial) are not blocks, and not counted."""

    def __init__(self, run: Callable[[Example], None]) -> None:
        self.run = run

    def __call__(self, example: Example) -> None:
        __tracebackhide__ = True
        self.run(example)


def sybil_for(page: Page) -> Sybil:
    """A Sybil whose parsers run one page's blocks against `page`'s directory and servers."""
    return Sybil(
        parsers=[
            SkipParser(),
            PartialParser(page),
            CodeBlockParser("python", _Block(run_python(page))),
            CodeBlockParser("console", _Block(run_console(page, prompts=True))),
            CodeBlockParser("sh", _Block(run_console(page, prompts=False))),
            CodeBlockParser("json", _Block(check_json)),
        ],
        path=str(ROOT),
    )


def evaluate_page(name: str, page: Page) -> tuple[int, list[str]]:
    """Run every block of one page in order; return how many ran and the skipped ones' reasons."""
    document = sybil_for(page).parse(ROOT / name)
    # The blocks run in a module of their own, as a reader's file would: its functions and
    # classes have a `__module__` that is imported (Litestar, Flask, Django, dataclasses look
    # it up), and `if __name__ == "__main__":` stays false.
    module = types.ModuleType("docs_" + re.sub(r"\W", "_", Path(name).stem))
    module.__file__ = str(page.cwd / f"{Path(name).stem}.py")
    sys.modules[module.__name__] = module
    document.namespace = module.__dict__
    ran, skipped = 0, []
    previous = Path.cwd()
    os.chdir(page.cwd)
    try:
        for example in document:
            try:
                example.evaluate()
            except unittest.SkipTest as skip:
                skipped.append(f"{name}:{example.line}: {skip}")
            else:
                ran += isinstance(example.region.evaluator, _Block)
    finally:
        os.chdir(previous)
    return ran, skipped


def main() -> None:
    """Run one page's blocks: `python -m tests.docs.examples PAGE DIR [SERVICES_JSON]`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("page", choices=PAGES)
    parser.add_argument("directory", type=Path)
    parser.add_argument("services", nargs="?", default="{}", help="Services' fields, as JSON")
    args = parser.parse_args()
    services = Services(**json.loads(args.services))
    ran, skipped = evaluate_page(args.page, Page(args.directory, services))
    for reason in skipped:
        print(f"skipped {reason}")
    print(f"{args.page}: {ran} blocks ran, {len(skipped)} skipped")


def run_page(name: str, directory: Path, services: Services) -> subprocess.CompletedProcess[str]:
    """Run `main` for one page in a fresh interpreter; its output and exit code come back."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "tests.docs.examples", name, str(directory)),
            json.dumps(dataclasses.asdict(services)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


if __name__ == "__main__":
    main()
