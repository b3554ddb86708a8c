"""mkdocs hook (mkdocs.yml `hooks:`): README.md is the site's home page.

mkdocs reads pages only from docs/, and the README links to `docs/http.md` because GitHub shows
it from the repository root. Generating `index.md` from it keeps one source for both, with no
plugin and nothing fetched: only the `docs/` prefix of its links changes.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

_DOCS_LINK = re.compile(r"\]\(docs/")


def home_page(readme: str) -> str:
    """The README's text with its links into docs/ made relative to the site's root."""
    return _DOCS_LINK.sub("](", readme)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add `index.md`, generated from the README beside mkdocs.yml."""
    readme = Path(config.config_file_path).parent / "README.md"
    files.append(File.generated(config, "index.md", content=home_page(readme.read_text())))
    return files
