"""The console in a real headless Chromium (Debian's, driven by Playwright): log in, see the stuck
claim, open a record, delete it and purge through their confirmation pages, and a form posted
from another site refused. Takes the screenshots docs/console.md shows (from the SQLite run): into
the test's temporary directory, and into docs/img when RETRYSAFE_UPDATE_SCREENSHOTS=1, so that
a plain test run leaves the checkout as it was."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.conftest import service_missing
from tests.console.conftest import STUCK, TOKEN, Console
from tests.servers import AsgiServer

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
UPDATE_SCREENSHOTS = os.environ.get("RETRYSAFE_UPDATE_SCREENSHOTS") == "1"
WAIT_MS = 10_000


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium; skipped loudly (failed under CI=true) when it is not installed."""
    executable = shutil.which("chromium")
    if executable is None:
        service_missing("Chromium", "chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _shoot(page: Page, name: str, console: Console, folder: Path) -> None:
    if console.store_url.startswith("sqlite"):  # one set of pictures for the docs
        folder = DOCS_IMAGES if UPDATE_SCREENSHOTS else folder
        page.screenshot(path=str(folder / f"console-{name}.png"), full_page=True)


def test_an_operator_finds_the_stuck_claim_and_deletes_it_in_the_browser(
    console: Console, browser: Browser, tmp_path: Path
) -> None:
    """Logged in by `?token=`, the overview shows the stuck claim and the payments; a record
    shows its stored response; delete and purge each go through their confirmation page."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    answer = page.goto(f"{console.url}/?token={TOKEN}")
    assert answer.status == 200
    assert "token=" not in page.url  # the login redirect dropped it
    assert page.locator("h1").inner_text() == "Overview"
    assert "stuck: lease expired" in page.locator("main").inner_text()
    assert "Nothing records replays and mismatches" in page.content()
    _shoot(page, "overview", console, tmp_path)

    payments = page.locator("table").nth(1).locator("a").filter(has_not_text=STUCK.namespace)
    payments.first.click()
    page.wait_for_url("**/records?namespace=*")
    assert "order-1" in page.locator("main").inner_text()
    _shoot(page, "namespace", console, tmp_path)

    page.get_by_role("link", name="order-1", exact=True).click()
    page.wait_for_url("**/record?*")
    text = page.locator("main").inner_text()
    assert "HTTP status 201" in text
    assert "pay_order-1" in text
    _shoot(page, "record", console, tmp_path)

    page.goto(f"{console.url}/records?namespace={STUCK.namespace}&state=stuck")
    page.get_by_role("link", name=STUCK.key).click()
    page.get_by_role("link", name="Delete this record…").click()
    assert page.locator("h1").inner_text() == "Delete this record?"
    _shoot(page, "confirm-delete", console, tmp_path)
    page.get_by_role("button", name="Delete this record").click()
    assert "Deleted record nightly-report" in page.locator("main").inner_text()
    gone = context.request.get(
        f"{console.url}/api/record",
        params={"namespace": STUCK.namespace, "scope": STUCK.scope, "key": STUCK.key},
    )
    assert gone.status == 404

    page.goto(f"{console.url}/")
    page.get_by_role("link", name="Purge expired records…").click()
    assert page.locator("h1").inner_text() == "Purge expired records?"
    page.get_by_role("button", name="Purge expired records").click()
    assert "Purged 1 expired record." in page.locator("main").inner_text()
    context.close()


def test_the_browser_gets_401_without_the_token_and_403_from_another_site(
    console: Console, browser: Browser
) -> None:
    """Without the token a page answers 401; logged in, a confirmed delete form posted from a
    page of another origin is refused with 403 and the record stays."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    assert page.goto(f"{console.url}/").status == 401
    assert page.goto(f"{console.url}/?token={TOKEN}").status == 200  # now logged in

    fields = {"namespace": STUCK.namespace, "scope": STUCK.scope, "key": STUCK.key}
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    form = (
        f'<form method="post" action="{console.url}/record/delete">{inputs}'
        '<input type="hidden" name="confirm" value="yes"><button>Win a prize</button></form>'
    )

    async def attacker(request: Request) -> HTMLResponse:
        return HTMLResponse(f"<!doctype html><title>prize</title>{form}")

    other = AsgiServer(Starlette(routes=[Route("/", attacker)]))
    try:
        page.goto(other.url)
        with page.expect_response(f"{console.url}/record/delete") as posted:
            page.get_by_role("button", name="Win a prize").click()
        assert posted.value.status == 403
    finally:
        other.stop()
    kept = context.request.get(f"{console.url}/api/record", params=fields)
    assert kept.status == 200
    context.close()
