"""Browser tests: a real `hoinghi serve` subprocess and headless Chromium driven by Playwright.

The server runs exactly as an operator would start it (python -m server.cli serve), on a
free loopback port with a fresh data directory, so these tests cover the static file
routes, the signaling socket and the media path together. Its log is printed when a test
fails. Chromium is Debian's /usr/bin/chromium with a fake camera and microphone (a test
pattern and a beep); Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = None
    if not CHROMIUM.exists():
        skip = pytest.mark.skip(reason=f"{CHROMIUM} is not installed")
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            skip = pytest.mark.skip(reason="playwright (python) is not installed")
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.browser)
            if skip is not None:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HoinghiServer:
    """One `hoinghi serve` process; restartable on the same port and data directory."""

    def __init__(self, port: int, data_dir: Path, log_path: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30) -> None:
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "server.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--announce-ip",
                    "127.0.0.1",
                ],
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"hoinghi serve exited with code {self.proc.returncode} before answering /healthz:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"hoinghi serve did not answer /healthz within {timeout_s:.0f} s:\n{self.log()}")
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def token(self, site: str, role: str = "site", meeting: str = "demo", ttl_s: int = 600, name: str | None = None) -> str:
        from server.auth import TokenService

        return TokenService(self.data_dir / "secret.key").issue(meeting, site, role, ttl_s, name=name)

    def expired_token(self, site: str, role: str = "site", meeting: str = "demo") -> str:
        """A correctly signed token whose validity ended two hours ago (beyond any leeway)."""
        from unittest import mock

        import server.auth

        real = time.time()
        with mock.patch.object(server.auth.time, "time", return_value=real - 3 * 3600):
            return self.token(site, role, meeting, ttl_s=3600)

    def join_url(self, page: str, token: str | None) -> str:
        return f"{self.url}/{page}" + (f"#t={token}" if token else "")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"


@pytest.fixture
def hoinghi(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HoinghiServer]:
    """`hoinghi serve` on a free loopback port; stopped (and its log shown on failure) after the test."""
    server = HoinghiServer(_free_port(), tmp_path / "data", tmp_path / "server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
        if failed:
            sys.stderr.write(f"\n----- hoinghi server log ({server.log_path}) -----\n{server.log()[-20000:]}\n----- end of server log -----\n")


@pytest.fixture
async def browser() -> AsyncIterator["object"]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


class PageLog:
    """Console messages and page errors of one page, printed when a test fails."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []

    def attach(self, page) -> None:
        page.on("console", lambda m: self.lines.append(f"[{self.name} console.{m.type}] {m.text}"))
        page.on("pageerror", lambda e: self.lines.append(f"[{self.name} pageerror] {e}"))


@pytest.fixture
async def open_page(browser, request: pytest.FixtureRequest):
    """open_page(name, url, lang=None) -> Page in its own browser context at 1280x800."""
    contexts = []
    logs: list[PageLog] = []

    async def _open(name: str, url: str, lang: str | None = None):
        ctx = await browser.new_context(viewport=VIEWPORT, locale="vi-VN")
        contexts.append(ctx)
        if lang:
            await ctx.add_init_script(f"localStorage.setItem('hoinghi.lang', {lang!r})")
        page = await ctx.new_page()
        log = PageLog(name)
        log.attach(page)
        logs.append(log)
        await page.goto(url)
        return page

    yield _open
    failed = getattr(getattr(request.node, "rep_call", None), "failed", False)
    if failed:
        for log in logs:
            sys.stderr.write("\n".join(log.lines[-200:]) + "\n")
    for ctx in contexts:
        try:
            await asyncio.wait_for(ctx.close(), 10)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
