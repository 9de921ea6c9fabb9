"""Browser fixtures: Debian's Chromium, headless, driven by Playwright, and playgrounds against real servers.

Playwright's own browser download cannot run here (and need not): it drives the system's Chromium,
which `make setup` installs. A fake microphone stands in for recording."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from tests.playground.running import RunningPlayground

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these Chromium's own background connections are refused by a closed network and it stalls
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # a fake microphone (a beep) that needs no permission prompt, for the recording test
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    """Headless Chromium for one test module. Not for the session: while Playwright's sync API
    runs, an event loop runs in the main thread, and later tests' `asyncio.run` would fail."""
    if not shutil.which(CHROMIUM):
        pytest.fail("no chromium on PATH: `make setup` installs Debian's package")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1300, "height": 1000},
        )
        yield context
        context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    """A fresh tab; a script error on the page fails the test that met it."""
    tab = browser.new_page()
    errors: list[Any] = []
    tab.on("pageerror", lambda error: errors.append(error))
    yield tab
    tab.close()
    assert errors == [], f"the page raised: {errors}"


@pytest.fixture(scope="session")
def playground(server: Any) -> Iterator[RunningPlayground]:
    """A playground against the shared real Cog server (tiny weights), live updates on."""
    with RunningPlayground(server.url) as running:
        yield running
