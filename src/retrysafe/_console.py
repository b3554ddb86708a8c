"""The `retrysafe` console script: the CLI, or one line naming the extra it needs."""

from __future__ import annotations

import sys

from retrysafe._extras import MissingExtraError


def main() -> None:
    """Run `retrysafe.cli.main`; without the `cli` extra, say so in one line and exit 1."""
    try:
        from retrysafe.cli import main as cli_main  # noqa: PLC0415 - the cli extra is optional
    except MissingExtraError as error:
        sys.stderr.write(f"retrysafe: {error}\n")
        sys.exit(1)
    cli_main()
