"""The screenshots of the page before, during and after a generation, in docs/ (docs/playground.md).

python -m tests.playground.screenshots     (a real server with tiny weights, as the page tests use)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from musicgen_cog.weights import random_weights
from tests.cog_server import CogServer
from tests.conftest import ROOT, TINY_WEIGHTS
from tests.playground.conftest import CHROMIUM, CHROMIUM_FLAGS
from tests.playground.driving import generate, open_ready, wait_for_end
from tests.playground.running import RunningPlayground

DOCS = ROOT / "docs"


def main() -> None:
    from musicgen_cog.api.cog_schema import write_schema

    write_schema()
    with tempfile.TemporaryDirectory() as folder:
        server = CogServer(random_weights.ensure_weights_folder(TINY_WEIGHTS), Path(folder) / "server.log")
        try:
            server.wait_for("READY")
            with RunningPlayground(server.url) as playground, sync_playwright() as driver:
                browser = driver.chromium.launch_persistent_context(
                    f"{folder}/profile", executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                    viewport={"width": 1300, "height": 900},
                )  # fmt: skip
                page = browser.new_page()
                open_ready(page, playground.url)
                page.fill("#input-prompt", "brushed jazz trio, upright bass, warm piano")
                page.screenshot(path=DOCS / "playground-before.png", full_page=True)
                take = generate(page, duration=60, seed=42)
                page.wait_for_function("document.getElementById('progress').value > 0.3", timeout=120_000)
                page.screenshot(path=DOCS / "playground-during.png", full_page=True)
                wait_for_end(page, take)
                page.screenshot(path=DOCS / "playground-after.png", full_page=True)
                browser.close()
        finally:
            server.stop()
    print("wrote docs/playground-{before,during,after}.png")


if __name__ == "__main__":
    main()
