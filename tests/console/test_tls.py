"""The console behind a TLS terminator: the login redirect is relative, the session cookie is
`Secure` over https, and the Origin check takes the public origin (`public_origin`, or the
scheme a loopback proxy's `X-Forwarded-Proto` says) while still refusing every other origin.

The browser test puts a real TLS terminator in front of the console (a byte pipe, as socat or
a load balancer in TCP mode is: it adds no header), with a throwaway self-signed certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser

from retrysafe import open_store
from retrysafe.console import create_app
from retrysafe.stores import Store
from tests.conftest import service_missing
from tests.console.conftest import STUCK, TOKEN, _stuck_and_expired
from tests.console.test_browser import WAIT_MS, browser  # noqa: F401 - the fixture
from tests.servers import AsgiServer

STUCK_ID = {"namespace": STUCK.namespace, "scope": STUCK.scope, "key": STUCK.key}
WAIT = 10.0
OPENSSL = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
OPENSSL += ["-subj", "/CN=127.0.0.1"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A SQLite store holding one stuck claim and one expired record."""
    url = f"sqlite:///{tmp_path / 'console.db'}"
    _stuck_and_expired(url)
    opened = open_store(url)
    try:
        yield opened
    finally:
        opened.close()


class TlsTerminator:
    """A TLS listener on 127.0.0.1 that pipes each connection's bytes to `upstream` as they are,
    on an event loop of its own; `sock` is bound (so its port is known) before it serves."""

    def __init__(self, tmp_path: Path) -> None:
        if shutil.which("openssl") is None:
            service_missing("openssl", "openssl is not installed (apt-get install openssl)")
        cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
        subprocess.run(
            [*OPENSSL, "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
            timeout=WAIT,
        )
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.origin = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._writers: list[asyncio.StreamWriter] = []

    def start(self, upstream_port: int) -> None:
        """Serve, piping every connection to 127.0.0.1:`upstream_port`."""

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
            self._writers += (writer, up_writer)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(connection, sock=self.sock, ssl=self.context), self.loop
        ).result(WAIT)

    def stop(self) -> None:
        """Close the listener and every piped connection, then the loop."""

        async def close() -> None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            closing = [writer.wait_closed() for writer in self._writers]
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), WAIT)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(WAIT)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(WAIT)
        self.loop.close()
        self.sock.close()


def _csrf(client: httpx.Client) -> str:
    """Return the CSRF token the pages carry (`client` holds the session cookie)."""
    page = client.get("/purge")
    assert page.status_code == 200, page.text
    start = page.text.index('name="csrf" value="') + len('name="csrf" value="')
    return page.text[start : page.text.index('"', start)]


def test_b35_the_login_redirect_is_relative(store: Store) -> None:
    """The login's redirect names the page by its path, so that behind a TLS terminator the
    browser stays on https (the console sees http)."""
    server = AsgiServer(create_app(store, TOKEN))
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=WAIT) as client:
            login = client.get("/records", params={"namespace": "jobs", "token": TOKEN})
            assert login.status_code == 303
            assert login.headers["location"] == "/records?namespace=jobs"
            assert "secure" not in login.headers["set-cookie"].lower()  # plain http
            twice = client.get(f"{server.url}//evil.example/?token={TOKEN}")  # never off-site
            assert twice.headers["location"] == "/evil.example/"
    finally:
        server.stop()


def test_b35_with_a_public_origin_the_cookie_is_secure_and_only_that_origin_may_post(
    store: Store,
) -> None:
    """Given its https public origin, the console sets a `Secure` cookie and takes a cookie
    POST whose Origin is that one; any other Origin, the console's own plain address too,
    is refused (403) and changes nothing."""
    public = "https://console.example"
    server = AsgiServer(create_app(store, TOKEN, public_origin=public + "/"))
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=WAIT) as client:
            login = client.get("/", params={"token": TOKEN})
            assert "; secure" in login.headers["set-cookie"].lower()
            client.cookies.set("retrysafe_console", login.cookies["retrysafe_console"])
            csrf = _csrf(client)
            delete = {**STUCK_ID, "confirm": "yes", "csrf": csrf}
            for foreign in ("https://evil.example", server.url, "http://console.example"):
                refused = client.post("/record/delete", data=delete, headers={"origin": foreign})
                assert refused.status_code == 403, (foreign, refused.text)
            bearer = {"authorization": f"Bearer {TOKEN}"}
            assert client.get("/api/record", params=STUCK_ID, headers=bearer).status_code == 200
            form = {"confirm": "yes", "csrf": csrf}
            purge = client.post("/purge", data=form, headers={"origin": public})
            assert purge.status_code == 200, purge.text
            assert "Purged 1 expired record." in purge.text
    finally:
        server.stop()


def test_b35_a_loopback_proxy_saying_https_gets_a_secure_cookie_and_its_origin_posts(
    store: Store,
) -> None:
    """Without a public origin, a TLS proxy on this machine that sends `X-Forwarded-Proto:
    https` makes the cookie `Secure` and the https Origin the console's own."""
    server = AsgiServer(create_app(store, TOKEN))
    https = {"x-forwarded-proto": "https"}
    try:
        with httpx.Client(
            base_url=server.url, trust_env=False, timeout=WAIT, headers=https
        ) as client:
            login = client.get("/", params={"token": TOKEN})
            assert "; secure" in login.headers["set-cookie"].lower()
            client.cookies.set("retrysafe_console", login.cookies["retrysafe_console"])
            csrf = _csrf(client)
            host = server.url.removeprefix("http://")
            form = {"confirm": "yes", "csrf": csrf}
            refused = client.post("/purge", data=form, headers={"origin": server.url})
            assert refused.status_code == 403
            purged = client.post("/purge", data=form, headers={"origin": f"https://{host}"})
            assert purged.status_code == 200, purged.text
    finally:
        server.stop()


def test_b35_behind_a_tls_terminator_the_browser_logs_in_deletes_and_purges(
    store: Store,
    browser: Browser,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """In Chromium, through a TLS terminator and the console's public origin: the login stays
    on https with a Secure cookie, and a delete and a purge through the pages' own forms work."""
    terminator = TlsTerminator(tmp_path)
    server = AsgiServer(create_app(store, TOKEN, public_origin=terminator.origin))
    terminator.start(int(server.url.rsplit(":", 1)[1]))
    try:
        context = browser.new_context(ignore_https_errors=True)
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        answer = page.goto(f"{terminator.origin}/?token={TOKEN}")
        assert answer is not None
        assert answer.status == 200
        assert page.url == f"{terminator.origin}/"
        assert [c["secure"] for c in context.cookies()] == [True]

        page.goto(f"{terminator.origin}/records?namespace={STUCK.namespace}&state=stuck")
        page.get_by_role("link", name=STUCK.key).click()
        page.get_by_role("link", name="Delete this record…").click()
        page.get_by_role("button", name="Delete this record").click()
        assert "Deleted record nightly-report" in page.locator("main").inner_text()

        page.goto(f"{terminator.origin}/purge")
        page.get_by_role("button", name="Purge expired records").click()
        assert "Purged 1 expired record." in page.locator("main").inner_text()
        context.close()
    finally:
        terminator.stop()
        server.stop()
