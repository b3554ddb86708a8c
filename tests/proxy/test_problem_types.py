"""Every problem the proxy answers is registered and documented (B24, B25, B37).

The proxy's own problems are anchors of docs/proxy.md (`PROXY_PROBLEMS`); those of the
middleware it runs behind, anchors of docs/http.md (`PROBLEMS`). The proxy's source is walked:
a problem it answers by a name that neither registry lists, or one answered around them
(`problem_response` with a type of its own), fails here; so does a registered name the proxy
never answers, a section docs/proxy.md lacks, or a status the section does not state.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from retrysafe._http.problems import (
    PROBLEMS,
    PROXY_PROBLEM_BASE_URL,
    PROXY_PROBLEMS,
    problem_catalogue,
)
from retrysafe.proxy._framing import proxy_problem

SOURCE = Path(__file__).resolve().parents[2] / "src" / "retrysafe" / "proxy"
DOCS = Path(__file__).resolve().parents[2] / "docs"
SITE = "https://retrysafe.readthedocs.io/en/latest/"


def _called(node: ast.Call) -> str:
    function = node.func
    if isinstance(function, ast.Attribute):
        return function.attr
    return function.id if isinstance(function, ast.Name) else ""


def _answered() -> dict[str, set[str]]:
    """Return the names the proxy's source answers, by the function that makes the answer:
    `proxy_problem` (its own), `problem` (the middleware's); `problem_response` calls are
    listed by the function that holds them, as `raw:<function>`."""
    found: dict[str, set[str]] = {}
    for path in sorted(SOURCE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.Call):
                    continue
                called = _called(node)
                if called == "problem_response":
                    found.setdefault("raw", set()).add(f"{path.name}:{function.name}")
                elif called in ("proxy_problem", "problem"):
                    first = node.args[0] if node.args else None
                    name = f"<not a literal in {path.name}>"
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        name = first.value
                    found.setdefault(called, set()).add(name)
    return found


def _sections(markdown: str) -> dict[str, str]:
    """Return each `### name` section's first paragraph, by name."""
    sections = re.split(r"^### ", markdown, flags=re.MULTILINE)[1:]
    return {s.split("\n", 1)[0].strip(): s.split("\n", 1)[1].strip() for s in sections}


def test_b24_every_problem_the_proxy_answers_is_registered() -> None:
    """The proxy's answers, walked in its source, are each in a registry: its own in
    `PROXY_PROBLEMS` (and each of those is answered), the middleware's in `PROBLEMS`; no
    problem is made with `problem_response` but by `proxy_problem` itself."""
    answered = _answered()
    assert answered.get("raw") == {"_framing.py:proxy_problem"}
    assert answered["proxy_problem"] == set(PROXY_PROBLEMS)
    assert answered.get("problem", set()) <= set(PROBLEMS)


def test_b24_b25_the_proxys_problems_are_answered_as_registered_and_documented() -> None:
    """Each of the proxy's problems renders with its registered status and title and a `type`
    under docs/proxy.md; that page has its section, whose first word is its status."""
    sections = _sections((DOCS / "proxy.md").read_text())
    for slug, (status, title) in PROXY_PROBLEMS.items():
        answer = proxy_problem(slug, "detail")
        body = json.loads(answer.body)
        assert (answer.status, body["status"], body["title"]) == (status, status, title)
        assert body["type"] == PROXY_PROBLEM_BASE_URL + slug
        assert slug in sections, f"docs/proxy.md has no section {slug}"
        assert sections[slug].startswith(f"{status}"), (slug, sections[slug][:40])
    assert f"{SITE}proxy/#" == PROXY_PROBLEM_BASE_URL


def test_b25_the_catalogue_lists_every_face_and_each_type_is_a_documented_section() -> None:
    """`problem_catalogue()` lists each problem of the middleware, of transactional mode and
    of the proxy once, by its `type`, and each is a section of the page it names; a name both
    the middleware and the proxy use (`body-too-large`) is two types, on two pages."""
    catalogue = problem_catalogue()
    assert len(catalogue) == len(PROBLEMS) + len(PROXY_PROBLEMS)
    for type_url, (status, title) in catalogue.items():
        page, _, slug = type_url.removeprefix(SITE).partition("#")
        assert slug in _sections((DOCS / (page.strip("/") + ".md")).read_text()), type_url
        assert (status, title) in (PROBLEMS.get(slug), PROXY_PROBLEMS.get(slug))
    assert {f"{SITE}http/#body-too-large", f"{SITE}proxy/#body-too-large"} <= set(catalogue)
