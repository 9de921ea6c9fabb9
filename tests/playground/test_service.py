"""Following a take through what can go wrong: a busy server, a server that goes away, no webhooks.

Against real Cog servers (tiny weights): one of its own with a single slot where the test fills it
or stops it, the shared one otherwise."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.cog_server import CogServer
from tests.helpers import SAMPLE_RATE, read_audio
from tests.playground.driving import generate, open_ready, wait_for_end
from tests.playground.running import RunningPlayground, closed_port


@pytest.fixture
def one_slot(tiny_weights, schema_file, tmp_path) -> Iterator[CogServer]:
    """A real server of its own that takes one prediction at a time."""
    instance = CogServer(tiny_weights, tmp_path / "server.log", env={"COG_MAX_CONCURRENCY": "1"})
    try:
        instance.wait_for("READY")
        yield instance
    finally:
        instance.stop()


@pytest.mark.slow
def test_a_busy_server_is_waited_for_and_the_page_says_so(one_slot, page):
    with RunningPlayground(one_slot.url, busy_retry_s=0.5) as playground:
        first = playground.api("/api/takes", {"input": {"prompt": "takes the slot", "duration": 300}})
        playground.wait_for(first["id"], "processing")
        open_ready(page, playground.url)  # BUSY: Generate still works, and waits
        assert page.get_attribute("#server-status", "data-status") == "BUSY"
        second = generate(page, prompt="waits", duration=1)
        page.wait_for_function("document.getElementById('take-notice').textContent.includes('Retrying every 0.5 s')")
        assert page.inner_text("#take-notice").startswith("The server is busy: every prediction slot is taken (409).")
        assert page.get_attribute("#take-status", "data-status") == "waiting"
        playground.api(f"/api/takes/{first['id']}/cancel", {})
        assert wait_for_end(page, second) == "succeeded"
        assert page.is_hidden("#take-notice")


@pytest.mark.slow
def test_a_server_that_goes_away_mid_take_ends_it_with_a_message(one_slot, page):
    with RunningPlayground(one_slot.url, watch_s=0.5) as playground:
        open_ready(page, playground.url)
        take = generate(page, prompt="interrupted", duration=300)
        page.wait_for_function("document.getElementById('progress').value > 0", timeout=120_000)
        one_slot.stop()  # SIGTERM: coglet exits and sends no terminal webhook
        assert wait_for_end(page, take, timeout_s=60) == "failed"
        error = page.inner_text("#take-error")
        assert error.startswith(
            f"Lost the server during this take: the Cog server at {one_slot.url} could not be reached"
        )
        page.wait_for_function("document.getElementById('server-status').dataset.status === 'UNREACHABLE'")


def test_without_a_webhook_address_a_take_is_one_sync_request(server, tmp_path):
    with RunningPlayground(server.url, live_updates=False) as playground:
        assert playground.api("/api/config")["live_updates"] is False
        take = playground.api("/api/takes", {"input": {"prompt": "x", "duration": 1, "seed": 3}})
        done = playground.wait_for(take["id"], "succeeded", "failed")
        assert (done["status"], done["seed"]) == ("succeeded", 3), done
        (tmp_path / "out.wav").write_bytes(playground.get(done["file_url"]))
        assert read_audio(tmp_path / "out.wav")[0].shape == (SAMPLE_RATE, 1)


def test_a_sync_take_is_cancelled_on_the_server(server):
    with RunningPlayground(server.url, live_updates=False) as playground:
        take = playground.api("/api/takes", {"input": {"prompt": "x", "duration": 300}})
        started = rf'"Starting prediction","prediction_id":"{take["id"]}"'  # nothing tells a sync client so: the log
        deadline = time.monotonic() + 30
        while not re.search(started, server.log_path.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert playground.api(f"/api/takes/{take['id']}/cancel", {})["cancel_problem"] is None
        assert playground.wait_for(take["id"], "canceled", "failed", timeout=30)["status"] == "canceled"
        assert re.search(rf'"Prediction cancelled","prediction_id":"{take["id"]}"', server.log_path.read_text())


def test_updates_that_never_arrive_are_explained(server):
    nowhere = f"http://127.0.0.1:{closed_port()}/api/webhook"
    with RunningPlayground(server.url, webhook=nowhere, watch_s=0.2, silent_s=1) as playground:
        take = playground.api("/api/takes", {"input": {"prompt": "x", "duration": 1}})
        deadline = time.monotonic() + 30
        while not playground.api(f"/api/takes/{take['id']}")["notice"] and time.monotonic() < deadline:
            time.sleep(0.2)
        notice = playground.api(f"/api/takes/{take['id']}")["notice"]
        assert f"none of its updates has reached the playground at {nowhere}" in notice
        assert "PLAYGROUND_WEBHOOK_URL" in notice
