"""What the page says for each state of the server: one sentence to act on, and whether a take may start."""

import pytest

from playground.health import describe

URL = "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    "status, ready, says",
    [("READY", True, "Ready."), ("BUSY", True, "waits for a free one"), ("STARTING", False, "loading the model")],
)
def test_the_usual_states(status, ready, says):
    seen = describe(URL, {"status": status})
    assert (seen["status"], seen["ready"]) == (status, ready) and says in seen["message"]


def test_a_failed_setup_says_so_with_the_end_of_its_log():
    logs = "\n".join(f"line {i}" for i in range(20)) + "\nFileNotFoundError: /weights/trained_model.tar\n"
    seen = describe(URL, {"status": "SETUP_FAILED", "setup": {"logs": logs, "status": "failed"}})
    assert not seen["ready"] and f"The Cog server at {URL} failed its setup" in seen["message"]
    assert seen["message"].endswith("line 19\nFileNotFoundError: /weights/trained_model.tar")
    assert "line 12" not in seen["message"]


def test_an_unhealthy_or_unreachable_server():
    assert "says it is UNHEALTHY" in describe(URL, {"status": "UNHEALTHY"})["message"]
    seen = describe(URL, None, f"the Cog server at {URL} could not be reached: nothing answers there")
    assert (seen["status"], seen["ready"]) == ("UNREACHABLE", False)
    assert (
        seen["message"].startswith(f"the Cog server at {URL} could not be reached") and "make serve" in seen["message"]
    )
