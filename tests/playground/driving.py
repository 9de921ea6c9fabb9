"""What a person does on the playground's page, as test steps: open it, fill inputs, generate, wait, download."""

from __future__ import annotations

from typing import Any

import requests
from playwright.sync_api import Page

TERMINAL = ("succeeded", "failed", "canceled")


def open_ready(page: Page, url: str) -> None:
    """Open the page and wait until the form is built and Generate is enabled (the server is READY)."""
    page.goto(url)
    page.wait_for_function("!document.getElementById('generate').disabled", timeout=120_000)


def fill(page: Page, **inputs: Any) -> None:
    for name, value in inputs.items():
        selector = f"#input-{name}"
        if isinstance(value, bool):
            page.set_checked(selector, value)
        elif page.eval_on_selector(selector, "e => e.tagName") == "SELECT":
            page.select_option(selector, str(value))
        else:
            page.fill(selector, "" if value is None else str(value))


def current_take(page: Page) -> str | None:
    return page.get_attribute("#take-status", "data-take")


def click_for_take(page: Page, button: str) -> str:
    """Click a button that starts a take (Generate, Same again, Vary); the new take's id."""
    before = current_take(page)
    page.click(button)
    page.wait_for_function(
        "before => (document.getElementById('take-status').dataset.take || null) !== before", arg=before
    )
    return str(current_take(page))


def generate(page: Page, **inputs: Any) -> str:
    fill(page, **inputs)
    return click_for_take(page, "#generate")


def wait_for_end(page: Page, take_id: str, timeout_s: float = 180) -> str:
    """The take's final status; for a success, once the player holds its clip, decoded and drawn."""
    page.wait_for_function(
        """([id, terminal]) => {
            const status = document.getElementById('take-status');
            if (status.dataset.take !== id || !terminal.includes(status.dataset.status)) return false;
            if (status.dataset.status !== 'succeeded') return true;
            const player = document.getElementById('player');
            return document.getElementById('result').dataset.take === id && player.dataset.decodedDuration;
        }""",
        arg=[take_id, list(TERMINAL)],
        timeout=timeout_s * 1000,
    )
    return str(page.get_attribute("#take-status", "data-status"))


def downloaded(page: Page, playground_url: str) -> tuple[str, bytes]:
    """The file behind the page's Download link: its name and bytes."""
    href = page.get_attribute("#download", "href")
    name = page.get_attribute("#download", "download")
    response = requests.get(f"{playground_url}{href}", timeout=30)
    assert response.status_code == 200, response.text
    return str(name), response.content
