"""`manage.py retrysafe_keys`: inspect and clean the project's idempotency records.

    python manage.py retrysafe_keys stats
    python manage.py retrysafe_keys list --state in_flight --older-than 5m
    python manage.py retrysafe_keys show 0ccb7813-2b7e
    python manage.py retrysafe_keys delete 0ccb7813-2b7e --scope c:923b541a
    python manage.py retrysafe_keys purge

The `retrysafe keys` command line (`list`, `show`, `delete`, `purge` and `stats`, with the same
options, output and exit codes) on the project's store: `--store` on the command line, else
`settings.RETRYSAFE["STORE"]`, else the `RETRYSAFE_STORE` environment variable. It needs the
`cli` extra (`pip install "retrysafe[cli]"`) and `"retrysafe.integrations"` in `INSTALLED_APPS`;
not the admin, nor any model.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, ClassVar

# Django ships no type information (django-stubs is a separate project).
from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]

from retrysafe.integrations._django_config import settings_from_django

__all__ = ["Command", "with_store"]

_COMMANDS = "list|show|delete|purge|stats"


def with_store(arguments: list[str], url: str | None) -> list[str]:
    """Return the `retrysafe keys` arguments with `--store url` after the command's name,
    unless the arguments name a store themselves (or there is no command, or no url)."""
    if url is None or any(a == "--store" or a.startswith("--store=") for a in arguments):
        return arguments
    for index, argument in enumerate(arguments):
        if not argument.startswith("-"):  # the command's name: list, show, ...
            return [*arguments[: index + 1], "--store", url, *arguments[index + 1 :]]
    return arguments


class Command(BaseCommand):  # type: ignore[misc] # Django's classes are untyped
    """`retrysafe keys` on `settings.RETRYSAFE["STORE"]`."""

    help = (
        "Inspect and clean the idempotency records: `retrysafe keys` "
        f"({_COMMANDS}) on RETRYSAFE['STORE']. Run 'retrysafe_keys list --help' for a "
        "command's options."
    )
    requires_system_checks: ClassVar[list[str]] = []  # it reads a store, not the models
    _prog = "retrysafe_keys"

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        """Make Django's parser, and remember the name to show in `retrysafe keys` usage."""
        self._prog = f"{os.path.basename(prog_name)} {subcommand}".strip()
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Take every argument after the command's name as `retrysafe keys` arguments."""
        parser.add_argument(
            "arguments",
            nargs=argparse.REMAINDER,
            metavar=f"{{{_COMMANDS}}} ...",
            help="A `retrysafe keys` command and its options (--store defaults to "
            "RETRYSAFE['STORE']).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run `retrysafe keys` with the arguments; exit as it exits when it fails."""
        try:
            import typer  # noqa: PLC0415 - the cli extra is optional

            from retrysafe.cli import keys  # noqa: PLC0415
        except ImportError as error:
            raise CommandError(str(error)) from error
        arguments = with_store(list(options["arguments"]), settings_from_django()[0])
        command = typer.main.get_command(keys.app)
        out = options.get("stdout") or sys.stdout
        err = options.get("stderr") or sys.stderr
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                command.main(args=arguments, prog_name=self._prog, standalone_mode=True)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise
