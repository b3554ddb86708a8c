"""The documentation site builds with --strict and publishes the policy problem types link to: B25.

The site is built once per module, as `make docs` builds it, into a temporary directory. Without
mkdocs (the `docs` dependency group, which `make setup` installs) the tests skip loudly, and fail
under CI=true, like the tests of a missing service.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from retrysafe._http import DEFAULT_PROBLEM_BASE_URL, PROBLEMS, Settings, problem_type
from tests.conftest import service_missing
from tests.http.test_problems import POLICY_ANCHORS, SITE

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
# Tags whose URL the browser loads by itself (a link's rel says whether it does).
_LOADED = {"script": "src", "img": "src", "iframe": "src", "source": "src", "link": "href"}
_NOT_LOADED_RELS = {"canonical", "prev", "next", "alternate"}


class _Page(HTMLParser):
    """The element ids of one HTML page and the URLs it makes the browser load."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.loads: list[str] = []
        self.hrefs: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "id" in values:
            self.ids.add(values["id"])
        if tag == "a" and "href" in values:
            self.hrefs.add(values["href"])
        url = values.get(_LOADED.get(tag, ""), "")
        if tag == "link" and values.get("rel") in _NOT_LOADED_RELS:
            return
        if url:
            self.loads.append(url)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built from this checkout by `mkdocs build --strict`."""
    if importlib.util.find_spec("mkdocs") is None:
        service_missing(
            "mkdocs", "mkdocs is not installed (the `docs` dependency group; `make setup`)"
        )
    site_dir = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return site_dir


def test_b25_the_site_has_every_problem_type_and_policy_anchor(site: Path) -> None:
    """The built page each problem's `type` names has an element id for it (the http page,
    the transactions page for transactional mode's), and the http page one per policy section."""
    for slug in PROBLEMS:
        page = problem_type(slug, Settings()).removeprefix(SITE).partition("#")[0]
        assert slug in _parse(site / page / "index.html").ids, (slug, page)
    assert set(POLICY_ANCHORS) <= _parse(site / "http" / "index.html").ids


def test_b25_problem_type_urls_point_at_the_built_http_page(site: Path) -> None:
    """The default `type` base URL is the http page's published address followed by `#`."""
    page = (site / "http" / "index.html").read_text(encoding="utf-8")
    canonical = DEFAULT_PROBLEM_BASE_URL.removesuffix("#")
    assert f'<link rel="canonical" href="{canonical}">' in page


def test_the_readme_is_the_home_page_with_links_into_the_site(site: Path) -> None:
    """The home page is the README, its `docs/...md` links turned into the site's pages."""
    home = _parse(site / "index.html")
    assert "retrysafe" in home.ids
    assert {"http/", "frameworks/", "transactions/", "stores/"} <= home.hrefs
    assert not any(href.startswith("docs/") for href in home.hrefs)


def test_the_site_loads_nothing_from_other_hosts(site: Path) -> None:
    """No page makes the browser fetch a script, stylesheet, font or image from another host."""
    external = {
        (str(path.relative_to(site)), url)
        for path in site.rglob("*.html")
        for url in _parse(path).loads
        if url.startswith(("http://", "https://", "//"))
    }
    assert external == set()
    for path in site.rglob("*.html"):
        assert "fonts.googleapis.com" not in path.read_text(encoding="utf-8"), path
