"""The playground's JSON API when there is nothing behind it: every answer is a message, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.playground.running import RunningPlayground, closed_port


@pytest.fixture
def no_server() -> Iterator[RunningPlayground]:
    with RunningPlayground(f"http://127.0.0.1:{closed_port()}") as playground:
        yield playground


def test_health_and_schema_say_the_server_is_not_there(no_server):
    health = no_server.api("/api/health")
    assert (health["status"], health["ready"]) == ("UNREACHABLE", False)
    assert "could not be reached: nothing answers there" in health["message"]
    response = requests.get(f"{no_server.url}/api/schema", timeout=10)
    assert response.status_code == 502 and "could not be reached" in response.json()["message"]


def test_a_take_against_no_server_fails_with_the_reason(no_server):
    take = no_server.api("/api/takes", {"input": {"prompt": "x"}})
    failed = no_server.wait_for(take["id"], "failed", timeout=30)
    assert "could not be reached: nothing answers there" in failed["error"]
    assert failed["error"].endswith("Nothing came back for this take; generate again once the server answers.")


def test_requests_the_page_would_never_send_get_messages(no_server):
    bad = requests.post(f"{no_server.url}/api/takes", data="{not json", timeout=10)
    assert bad.status_code == 400 and bad.json()["message"].startswith("a take needs a JSON body with `input`")
    for path in ("/api/takes/nope", "/api/takes/nope/file"):
        gone = requests.get(f"{no_server.url}{path}", timeout=10)
        assert gone.status_code == 404 and gone.json()["message"].startswith("no take nope here")


def test_the_page_and_its_scripts_are_served(no_server):
    page = requests.get(no_server.url, timeout=10)
    assert page.status_code == 200 and '<script type="module" src="/static/app.js">' in page.text
    for script in ("app.js", "form.js", "take_view.js", "history.js", "audio_view.js", "recorder.js", "api.js"):
        assert requests.get(f"{no_server.url}/static/{script}", timeout=10).status_code == 200, script
